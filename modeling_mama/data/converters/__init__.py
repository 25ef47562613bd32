"""Dataset converters: each dataset's published tables and DICOM files -> one `datasets.DatasetDict` schema.

- `embed.convert_embed(root, out, ...)`: EMBED (pre-training; BI-RADS, density).
- `rsna.convert_rsna(root, out, ...)`: RSNA Screening Mammography (cancer).
- `vindr.convert_vindr(root, out, ...)`: VinDr-Mammo (BI-RADS, density).
- `common`: table reading, splits, the image cache and the atomic writer they share.

The command lines are `data_scripts/{embed,rsna,vindr}.py`; DESIGN.md "Dataset schema" lists the columns.
"""
