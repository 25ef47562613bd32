"""Write a synthetic EMBED / RSNA / VinDr / CBIS-DDSM / CMMD look-alike with real DICOM files.

    python data_scripts/synthetic.py --out data/synthetic_embed
    python data_scripts/synthetic.py --out data/synthetic_rsna --format rsna --num-exams 50
    python data_scripts/synthetic.py --out data/synthetic_cbis --format cbis_ddsm --image-size 640x416
    python data_scripts/synthetic.py --out data/embed_full --image-size full --workers 2
    python data_scripts/synthetic.py --out data/microcalc --image-size 2048x1664 --microcalcifications 0.5

See `modeling_mama.data.synthetic` for what is generated and how it mimics each dataset.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from modeling_mama.data.synthetic import GENERATORS, parse_image_size


def main(argv: Sequence[str] | None = None) -> int:
    """`python data_scripts/synthetic.py --out X [--format embed|rsna|vindr|cbis_ddsm|cmmd] [--num-exams N] ...`"""
    parser = argparse.ArgumentParser(
        description="Write a synthetic EMBED / RSNA / VinDr / CBIS-DDSM / CMMD look-alike with real DICOM files.")
    parser.add_argument("--out", required=True, help="folder to write (created; re-running resumes)")
    parser.add_argument("--format", choices=tuple(GENERATORS), default="embed")
    parser.add_argument("--num-exams", type=int, default=None,
                        help="EMBED exams (default 40), RSNA patients (20), VinDr studies (20), CBIS-DDSM patients "
                             "(12) or CMMD patients (10)")
    parser.add_argument("--image-size", default="256x208", help="'HxW' (rows x columns) or 'full' (3328x2560)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes writing images")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--microcalcifications", type=float, default=None, metavar="FRACTION",
                        help="EMBED only: write the micro-calcification benchmark instead of the usual mix, "
                             "with clusters on this fraction of the breasts (use a full-field --image-size)")
    args = parser.parse_args(argv)
    if args.microcalcifications is not None and args.format != "embed":
        parser.error("--microcalcifications is an option of the EMBED look-alike (--format embed)")
    if args.microcalcifications is not None and not 0.0 <= args.microcalcifications <= 1.0:
        parser.error(f"--microcalcifications {args.microcalcifications} must be a fraction of breasts in [0, 1]")
    try:
        image_size = parse_image_size(args.image_size)
    except ValueError as error:
        parser.error(str(error))
    options = {"image_size": image_size, "seed": args.seed, "workers": args.workers, "progress": not args.no_progress}
    count = ({"embed": 40, "rsna": 20, "vindr": 20, "cbis_ddsm": 12, "cmmd": 10}[args.format]
             if args.num_exams is None else args.num_exams)
    count_argument = {"embed": "num_exams", "rsna": "num_patients", "vindr": "num_studies", "cbis_ddsm": "num_patients",
                      "cmmd": "num_patients"}[args.format]
    if args.microcalcifications is not None:
        options["microcalcifications"] = args.microcalcifications
    root = GENERATORS[args.format](args.out, **{count_argument: count}, **options)
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
