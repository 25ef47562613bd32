"""What did MaMA align? One heat map per report sentence, over the mammogram.

    python examples/explain.py --model outputs/pretrain-demo --image exam/L-CC.dcm \
        --report "Breast composition: The breast is extremely dense. Findings: A mass is present." \
        --output_dir runs/explain

`--fields '{"density": 4, "birads": 4, "laterality": "L", "view": "CC"}'` builds the structured report
(METHOD.md section 3) instead of `--report`. For each sentence the patch-sentence cosine similarity of
the local (SLA) heads is upsampled onto the preprocessed view (oriented, breast-cropped) and saved as
`sentence_XX.png`; `summary.json` lists the sentences, their files and similarity ranges.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.file_utils_mama import write_json_atomic
from modeling_mama.reports import ReportFields, build_report
from modeling_mama.tokenization import split_sentences
from modeling_mama.training.visualization import plot_heat_map, sentence_heat_maps


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A saved MaMA folder (model + processor).")
    parser.add_argument("--image", required=True, help="A DICOM file or an image file.")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--report", help="Report text; sentences end with '. '.")
    text.add_argument("--fields", help="JSON object of report fields (ReportFields names).")
    parser.add_argument("--output_dir", required=True)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = MamaModel.from_pretrained(args.model).eval()
    processor = MamaProcessor.from_pretrained(args.model)
    if args.fields is not None:
        sentences = build_report(ReportFields(**json.loads(args.fields)))
    else:
        sentences = split_sentences(args.report)
    if not sentences:
        raise SystemExit("error: the report has no sentence.")
    view, similarity = sentence_heat_maps(model, processor, args.image, sentences)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {"image": args.image, "model": args.model, "sentences": []}
    for index, (sentence, grid) in enumerate(zip(sentences, similarity)):
        path = plot_heat_map(view, grid, output_dir / f"sentence_{index:02d}.png", title=sentence)
        summary["sentences"].append({"sentence": sentence, "file": path.name,
                                     "max_similarity": float(grid.max()), "mean_similarity": float(grid.mean())})
    write_json_atomic(output_dir / "summary.json", summary)
    print(f"{len(sentences)} heat maps -> {output_dir}")
    return summary


if __name__ == "__main__":
    main()
