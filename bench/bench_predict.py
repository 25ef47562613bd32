"""Throughput of `examples/predict.py`'s batch path, as a ratio to the image processor alone.

Writes synthetic four-view exams (uint16 DICOM, 12 bits stored, `--rows` x `--cols`) in a temporary
folder, reads their headers once (`dicom_scan.scan_dicoms`, reported as files/s), then times over the
same files:

* processor: `processor.image_processor(path)` per file (reading, decoding, calibration, orientation,
  breast crop, resize, normalisation): what any use of the model pays;
* predict: `predict.score_batch` over batches of `--batch_size` records plus the journal append
  (decoding and preprocessing every file, the model's image tower, the cached class prompts, the
  logits), i.e. everything `predict.py` does per image.

Both are timed back to back on each batch in every pass, after a warm-up pass (which also fills the
prompt cache, as the first batches of a long run do), and each batch's best pass counts (the least
disturbed by other processes on a shared machine). The model is a tiny one shaped
like the demo's (`python examples/pretrain.py`: 112 px) unless `--model` names a saved folder;
`--vision paper` swaps in the paper's image tower (DINOv2-reg ViT-B/14 at 518, random weights) to show
what the real model's image cost does to the ratio.

Run: `python bench/bench_predict.py [--exams 4] [--batch_size 16] [--vision tiny|paper] [--model DIR]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from dicom_factory import breast_pixels, mammogram_dataset, write_dataset  # noqa: E402

from modeling_mama import MamaConfig, MamaImageProcessor, MamaModel, MamaProcessor  # noqa: E402
from modeling_mama.data.dicom_scan import scan_dicoms  # noqa: E402
from modeling_mama.pipelines import ZeroShotScorer  # noqa: E402
from modeling_mama.reports import ReportFields, build_report, zero_shot_prompts  # noqa: E402
from modeling_mama.tokenization import train_report_tokenizer  # noqa: E402


def load_predict():
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict", REPO / "examples" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_model(folder: Path, vision: str) -> None:
    """A demo-shaped tiny MaMA (random weights) saved in `folder`; `vision="paper"`: the paper's image tower."""
    sentences = [sentence for density in (1, 2, 3, 4) for birads in (1, 2, 4)
                 for sentence in build_report(ReportFields(procedure="MG Screening Bilateral", age=50 + density,
                                                           laterality="L", view="CC", density=density, birads=birads))]
    sentences += [sentence for task in ("birads", "density", "cancer")
                  for prompt in zero_shot_prompts(task) for sentence in prompt]
    tokenizer = train_report_tokenizer(sentences, vocab_size=1000)
    image_size = 518 if vision == "paper" else 112
    overrides = {"vision_config": MamaConfig.paper().vision_config.to_dict()} if vision == "paper" else {}
    config = MamaConfig.tiny(vocab_size=len(tokenizer), image_size=image_size,
                             sentence_separator_token_id=tokenizer.sep_token_id, **overrides)
    MamaModel(config).save_pretrained(folder)
    image_processor = MamaImageProcessor(size={"height": image_size, "width": image_size})
    MamaProcessor(image_processor, tokenizer).save_pretrained(folder)


def write_exams(folder: Path, exams: int, rows: int, cols: int) -> None:
    for exam in range(exams):
        study = f"1.2.826.0.1.3680043.10.{exam + 1}"
        for index, (side, view) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]):
            ds = mammogram_dataset(breast_pixels(rows, cols, laterality=side, seed=4 * exam + index),
                                   laterality=side, view_position=view, patient_id=f"P{exam}",
                                   study_instance_uid=study, window=(2048, 4096))
            ds.PatientAge, ds.StudyDescription = f"{50 + exam:03d}Y", "MG Screening Bilateral"
            write_dataset(ds, folder / f"P{exam}" / f"IM{index}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=4, help="four-view exams to write")
    parser.add_argument("--rows", type=int, default=2294)
    parser.add_argument("--cols", type=int, default=1914)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--task", default="birads")
    parser.add_argument("--vision", choices=("tiny", "paper"), default="tiny")
    parser.add_argument("--model", default=None, help="a saved MaMA folder instead of the generated model")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (the best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    predict = load_predict()

    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        model_folder = Path(args.model) if args.model else directory / "model"
        if not args.model:
            build_model(model_folder, args.vision)
        write_exams(directory / "exams", args.exams, args.rows, args.cols)
        start = time.perf_counter()
        records, failures = scan_dicoms(directory / "exams")
        scan_seconds = time.perf_counter() - start
        assert not failures, failures
        model = MamaModel.from_pretrained(model_folder).eval()
        processor = MamaProcessor.from_pretrained(model_folder)
        scorer = ZeroShotScorer(model, processor, args.task)
        journal = predict.Journal(directory / "preds.csv.partial")

        batches = [records[offset:offset + args.batch_size] for offset in range(0, len(records), args.batch_size)]

        def processor_seconds(batch) -> float:
            start = time.perf_counter()
            for record in batch:
                processor.image_processor(record.path)["pixel_values"]
            return time.perf_counter() - start

        def predict_seconds(batch) -> float:
            start = time.perf_counter()
            rows, failures = predict.score_batch(scorer, batch)
            journal.append(rows)
            elapsed = time.perf_counter() - start
            assert len(rows) == len(batch), failures
            return elapsed

        for batch in batches:  # warm-up: lookup tables, kernels, the prompt cache
            processor_seconds(batch), predict_seconds(batch)
        best_processor = [float("inf")] * len(batches)
        best_predict = [float("inf")] * len(batches)
        for _ in range(args.repeats):
            for index, batch in enumerate(batches):
                best_processor[index] = min(best_processor[index], processor_seconds(batch))
                best_predict[index] = min(best_predict[index], predict_seconds(batch))
        processor_total, predict_total = sum(best_processor), sum(best_predict)
        journal.close()

    count = len(records)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    size = processor.image_processor.size
    print(f"{count} files of {args.rows}x{args.cols} (uncompressed, 12 bits), task {args.task}, "
          f"batch {args.batch_size}, "
          f"model {args.model or args.vision} ({parameters / 1e6:.2f} M parameters, {size['height']} px), "
          f"torch threads {torch.get_num_threads()}, best of {args.repeats}, load {os.getloadavg()[0]:.2f}")
    print(f"{'header scan':<22}{count / scan_seconds:>10.1f} files/s")
    print(f"{'processor alone':<22}{count / processor_total:>10.2f} img/s  (decode + preprocess)")
    print(f"{'predict batch path':<22}{count / predict_total:>10.2f} img/s  (+ image tower, prompts, logits, journal)")
    print(f"ratio predict / processor: {processor_total / predict_total:.2f}")


if __name__ == "__main__":
    main()
