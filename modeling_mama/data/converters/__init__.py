"""Dataset converters: each dataset's published tables and DICOM files -> one `datasets.DatasetDict` schema.

Every converter is a `common.DatasetConverter` registered in `CONVERTERS` under its name:

- `embed.EmbedConverter` / `convert_embed(root, out, ...)`: EMBED (pre-training; BI-RADS, density).
- `rsna.RsnaConverter` / `convert_rsna(root, out, ...)`: RSNA Screening Mammography (cancer).
- `vindr.VindrConverter` / `convert_vindr(root, out, ...)`: VinDr-Mammo (BI-RADS, density).
- `common`: the contract (`DatasetConverter`), table reading, splits, the image cache, the atomic
  writer and the shards (`Shard`) they share.
- `merge.merge_shards(shards, out)`: one DatasetDict from the shards of a conversion run on several
  machines (`--num-shards N --shard-index i`).

The command lines are `data_scripts/<name>.py`; DESIGN.md "Dataset schema" lists the columns and
"Add a dataset" the files a new converter touches.
"""

from . import embed, rsna, vindr  # noqa: F401  (registers the converters)
from .common import CONVERTERS, DatasetConverter, register_converter

__all__ = ["CONVERTERS", "DatasetConverter", "register_converter"]
