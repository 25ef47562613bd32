"""Write a synthetic EMBED / RSNA / VinDr look-alike with real DICOM files.

    python data_scripts/synthetic.py --out data/synthetic_embed
    python data_scripts/synthetic.py --out data/synthetic_rsna --format rsna --num-exams 50
    python data_scripts/synthetic.py --out data/embed_full --image-size full --workers 2

See `modeling_mama.data.synthetic` for what is generated and how it mimics each dataset.
"""

from modeling_mama.data.synthetic import main

if __name__ == "__main__":
    raise SystemExit(main())
