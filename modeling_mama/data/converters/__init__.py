"""Dataset converters: each dataset's published tables and DICOM files -> one `datasets.DatasetDict` schema.

- `embed.convert_embed(root, out, ...)`: EMBED (pre-training; BI-RADS, density).
- `rsna.convert_rsna(root, out, ...)`: RSNA Screening Mammography (cancer).
- `vindr.convert_vindr(root, out, ...)`: VinDr-Mammo (BI-RADS, density).
- `common`: table reading, splits, the image cache, the atomic writer and the shards they share.
- `merge.merge_shards(shards, out)`: one DatasetDict from the shards of a conversion run on
  several machines (`--num-shards N --shard-index i`).

The command lines are `data_scripts/{embed,rsna,vindr,merge}.py`; DESIGN.md "Dataset schema" lists the columns.
"""
