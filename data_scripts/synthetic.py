"""Write a synthetic EMBED / RSNA / VinDr look-alike with real DICOM files.

    python data_scripts/synthetic.py --out data/synthetic_embed
    python data_scripts/synthetic.py --out data/synthetic_rsna --format rsna --num-exams 50
    python data_scripts/synthetic.py --out data/embed_full --image-size full --workers 2

See `modeling_mama.data.synthetic` for what is generated and how it mimics each dataset.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from modeling_mama.data.synthetic import GENERATORS, parse_image_size


def main(argv: Sequence[str] | None = None) -> int:
    """`python data_scripts/synthetic.py --out X [--format embed|rsna|vindr] [--num-exams N] ...`"""
    parser = argparse.ArgumentParser(
        description="Write a synthetic EMBED / RSNA / VinDr look-alike with real DICOM files.")
    parser.add_argument("--out", required=True, help="folder to write (created; re-running resumes)")
    parser.add_argument("--format", choices=("embed", "rsna", "vindr"), default="embed")
    parser.add_argument("--num-exams", type=int, default=None,
                        help="EMBED exams (default 40), RSNA patients (20) or VinDr studies (20)")
    parser.add_argument("--image-size", default="256x208", help="'HxW' (rows x columns) or 'full' (3328x2560)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes writing images")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        image_size = parse_image_size(args.image_size)
    except ValueError as error:
        parser.error(str(error))
    options = {"image_size": image_size, "seed": args.seed, "workers": args.workers, "progress": not args.no_progress}
    count = {"embed": 40, "rsna": 20, "vindr": 20}[args.format] if args.num_exams is None else args.num_exams
    count_argument = {"embed": "num_exams", "rsna": "num_patients", "vindr": "num_studies"}[args.format]
    root = GENERATORS[args.format](args.out, **{count_argument: count}, **options)
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
