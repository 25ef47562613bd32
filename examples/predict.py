"""Score a folder of mammogram DICOM files with a trained MaMA: one row per image, per breast and per exam.

    python examples/predict.py --model outputs/pretrain-demo --input pacs_export/ --task density --output preds.csv

`--input` is a folder (searched recursively; files need no extension) or a CSV whose `--path_column`
lists the files. Headers are read first (no pixels) to keep the 2D "For Presentation" full-field
mammograms (synthesized 2D C-Views only with `--include_synthesized_2d`) and group them into exams
(`StudyInstanceUID`) and breasts (laterality); every image is then decoded, preprocessed and scored in
batches, zero-shot, against the paper's prompts built from its own header (procedure =
StudyDescription, age, laterality, view: METHOD.md section 7).

The output (`--format csv`, or `json`, default from the file name) has one row per image, then per
breast and per exam (the mean of their views' probabilities; `--aggregate max` takes the most
suspicious view, binary tasks only), with `level`, `exam_id`, `patient_id`, `laterality` and
`laterality_source` (`ImageLaterality` / `Laterality` tag or `pixels`), `view` and `view_source`,
`image_id` (SOPInstanceUID), `path`, `num_images`, `prediction` and one `score_<class>` column per class.

A run can be killed and started again with the same command: image rows are appended to
`<output>.partial` (JSON lines, flushed to disk after every batch), a re-run skips every image already
there or in the output, and the output is written (atomically) only at the end, with the breast and
exam rows recomputed from the image rows. Files that are not 2D mammograms or cannot be decoded are
listed with the reason in `failures.csv` next to the output; the run carries on.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.data.dicom_scan import ScanFailure, group_by_exam, scan_dicoms
from modeling_mama.dicom import DicomError, read_dicom
from modeling_mama.file_utils_mama import atomic_path
from modeling_mama.reports import CLASS_NAMES, ZERO_SHOT_TASKS
from modeling_mama.zero_shot_scoring import (
    ZeroShotScorer,
    aggregate_scores,
    concatenate_inputs,
)

LEVELS = ("image", "breast", "exam")
ID_COLUMNS = ["level", "exam_id", "patient_id", "laterality", "laterality_source", "view", "view_source",
              "image_id", "path", "num_images", "task", "aggregate", "prediction"]
FAILURE_COLUMNS = ["path", "reason"]
SCORE_DECIMALS = 6


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A saved MaMA folder (model + processor) or Hub id.")
    parser.add_argument("--input", required=True, help="A folder of DICOM files, or a CSV listing them.")
    parser.add_argument("--task", required=True, choices=ZERO_SHOT_TASKS)
    parser.add_argument("--output", required=True, help="The predictions file (.csv or .json).")
    parser.add_argument("--format", choices=("csv", "json"), default=None,
                        help="Output format (default: json for a .json output, else csv).")
    parser.add_argument("--path_column", default="path", help="The CSV column holding file paths.")
    parser.add_argument("--include_synthesized_2d", action="store_true",
                        help="Also score synthesized 2D images (C-View); by default they are listed in failures.csv.")
    parser.add_argument("--aggregate", choices=("mean", "max"), default="mean",
                        help="Breast / exam score from the views': mean (default) or max (binary tasks).")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available).")
    parser.add_argument("--no_progress", action="store_true", help="No progress bars.")
    args = parser.parse_args(argv)
    args.format = args.format or ("json" if args.output.lower().endswith(".json") else "csv")
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1.")
    if args.aggregate == "max" and len(CLASS_NAMES[args.task]) != 2:
        parser.error(f"--aggregate max needs a binary task (cancer); {args.task} has {len(CLASS_NAMES[args.task])} "
                     "classes.")
    return args


def score_column(class_name: str) -> str:
    """`score_A`, `score_BI_RADS_4`, `score_positive`: a column name per class."""
    return "score_" + re.sub(r"[^0-9A-Za-z]+", "_", class_name).strip("_")


# ------------------------------------------------------------------------------------------ rows
def image_row(record, image, probabilities, task: str, class_names: list[str]) -> dict:
    """The output row of one scored image (laterality and its source as `read_dicom` found them)."""
    row = {
        "level": "image", "exam_id": record.exam_id, "patient_id": record.patient_id or "",
        "laterality": image.laterality or "", "laterality_source": image.laterality_source or "",
        "view": record.view or "", "view_source": record.view_source or "", "image_id": record.image_id,
        "path": record.path, "num_images": 1, "task": task, "aggregate": "",
    }
    return _with_scores(row, probabilities, class_names)


def aggregate_rows(image_rows: list[dict], class_names: list[str], how: str = "mean") -> list[dict]:
    """Every exam's image rows followed by its breast rows and its exam row.

    A breast's scores aggregate its views' probabilities (`pipelines.aggregate_scores`); the exam's
    aggregate all its views. Images of unknown side count for the exam only.
    """
    columns = [score_column(name) for name in class_names]
    exams: dict[str, list[dict]] = {}
    for row in image_rows:
        exams.setdefault(row["exam_id"], []).append(row)
    rows = []
    for exam_id in sorted(exams):
        views = sorted(exams[exam_id], key=lambda row: (row["laterality"], row["view"], row["path"]))
        scores = [[float(row[column]) for column in columns] for row in views]
        rows += views
        sided = [index for index, row in enumerate(views) if row["laterality"]]
        if sided:
            breasts, breast_scores = aggregate_scores([scores[i] for i in sided],
                                                      [views[i]["laterality"] for i in sided], how=how)
            for side, side_scores in sorted(zip(breasts, breast_scores), key=lambda pair: pair[0]):
                members = [views[i] for i in sided if views[i]["laterality"] == side]
                sources = sorted({row["laterality_source"] for row in members})
                rows.append(_group_row("breast", members, class_names, side_scores, how, laterality=side,
                                       laterality_source="+".join(sources)))
        _, exam_scores = aggregate_scores(scores, [exam_id] * len(scores), how=how)
        rows.append(_group_row("exam", views, class_names, exam_scores[0], how))
    return rows


def _group_row(level: str, members: list[dict], class_names: list[str], scores, how: str, laterality: str = "",
               laterality_source: str = "") -> dict:
    first = members[0]
    row = {
        "level": level, "exam_id": first["exam_id"], "patient_id": first["patient_id"], "laterality": laterality,
        "laterality_source": laterality_source, "view": "", "view_source": "", "image_id": "", "path": "",
        "num_images": len(members), "task": first["task"], "aggregate": how,
    }
    return _with_scores(row, scores, class_names)


def _with_scores(row: dict, scores, class_names: list[str]) -> dict:
    scores = [round(float(score), SCORE_DECIMALS) for score in scores]
    row["prediction"] = class_names[max(range(len(scores)), key=scores.__getitem__)]
    row.update({score_column(name): score for name, score in zip(class_names, scores)})
    return row


# ------------------------------------------------------------------------------------------ files
def _atomic_write(path: Path, write) -> None:
    """Write through a temporary name in the same folder, then rename: never a half-written file."""
    with atomic_path(path) as temporary, open(temporary, "x", newline="", encoding="utf-8") as stream:
        write(stream)


def write_predictions(path: Path, rows: list[dict], fmt: str, task: str, class_names: list[str], model: str) -> None:
    columns = ID_COLUMNS + [score_column(name) for name in class_names]
    if fmt == "csv":
        def write(stream):
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    else:
        score_columns = {score_column(name): name for name in class_names}

        def nested(row: dict) -> dict:
            entry = {key: value for key, value in row.items() if key not in score_columns}
            entry["scores"] = {name: row[column] for column, name in score_columns.items()}
            return entry

        document = {"task": task, "model": model, "class_names": class_names,
                    **{f"{level}s": [nested(row) for row in rows if row["level"] == level] for level in LEVELS}}

        def write(stream):
            json.dump(document, stream, indent=1)
            stream.write("\n")
    _atomic_write(path, write)


def write_failures(path: Path, failures: list[ScanFailure]) -> None:
    def write(stream):
        writer = csv.writer(stream)
        writer.writerow(FAILURE_COLUMNS)
        writer.writerows((failure.path, failure.reason) for failure in failures)

    _atomic_write(path, write)


def read_scored_images(output: Path, fmt: str, journal: Path, class_names: list[str]) -> list[dict]:
    """Image rows of earlier runs: the output's, then the journal's (a torn last line is dropped)."""
    rows = []
    if output.exists():
        if fmt == "csv":
            with open(output, newline="", encoding="utf-8") as stream:
                rows += [row for row in csv.DictReader(stream) if row["level"] == "image"]
        else:
            for entry in json.loads(output.read_text(encoding="utf-8")).get("images", []):
                scores = entry.pop("scores")
                rows.append({**entry, **{score_column(name): scores[name] for name in class_names}})
    if journal.exists():
        lines = journal.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                rows.append(json.loads(line))
                kept.append(line)
            except json.JSONDecodeError:
                break  # the run was killed while writing this line: everything after it is lost too
        if len(kept) != len(lines):
            _atomic_write(journal, lambda stream: stream.write("".join(line + "\n" for line in kept)))
    return rows


class Journal:
    """Image rows appended as JSON lines and forced to disk after every batch."""

    def __init__(self, path: Path):
        self.path = path
        self.stream = open(path, "a", encoding="utf-8")

    def append(self, rows: list[dict]) -> None:
        self.stream.write("".join(json.dumps(row) + "\n" for row in rows))
        self.stream.flush()
        os.fsync(self.stream.fileno())

    def close(self) -> None:
        self.stream.close()


# ------------------------------------------------------------------------------------------ run
def score_batch(scorer: ZeroShotScorer, records) -> tuple[list[dict], list[ScanFailure]]:
    """Decode, preprocess and score a batch of records; a file that fails is a failure, not an error."""
    images, fields, inputs, kept, failures = [], [], [], [], []
    for record in records:
        try:
            image = read_dicom(record.path, refuse_non_mg=True)
            image_fields = record.report_fields(image.laterality)
            inputs.append(scorer.preprocess([image], [image_fields]))
        except (DicomError, OSError, ValueError) as error:
            failures.append(ScanFailure(record.path, str(error).removeprefix(f"{record.path}: ")))
            continue
        except Exception as error:  # one odd file must not stop a night-long run
            failures.append(ScanFailure(record.path, f"preprocessing failed ({type(error).__name__}: {error})"))
            continue
        images.append(image)
        fields.append(image_fields)
        kept.append(record)
    if not kept:
        return [], failures
    probabilities = scorer.logits(concatenate_inputs(inputs), fields).float().softmax(dim=-1).cpu().numpy()
    rows = [image_row(record, image, scores, scorer.task, scorer.class_names)
            for record, image, scores in zip(kept, images, probabilities)]
    return rows, failures


def main(argv=None) -> dict:
    args = parse_args(argv)
    output = Path(args.output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    journal_path = output.with_name(output.name + ".partial")
    failures_path = output.with_name("failures.csv")
    class_names = list(CLASS_NAMES[args.task])

    done = read_scored_images(output, args.format, journal_path, class_names)
    other_tasks = sorted({row["task"] for row in done} - {args.task})
    if other_tasks:
        raise SystemExit(f"error: {output} holds {', '.join(other_tasks)} predictions, not {args.task}; "
                         "choose another --output or remove it.")
    records, failures = scan_dicoms(args.input, path_column=args.path_column, progress=not args.no_progress,
                                    include_synthesized_2d=args.include_synthesized_2d,
                                    exclude=[output, journal_path, failures_path])
    records = [dataclasses.replace(record, path=str(Path(record.path).resolve())) for record in records]
    failures = [ScanFailure(str(Path(failure.path).resolve()), failure.reason) for failure in failures]
    present = {record.path for record in records}
    done = [row for row in done if row["path"] in present]  # a file removed from the input leaves the output
    scored = {row["path"] for row in done}
    todo = [record for breasts in group_by_exam(records).values() for views in breasts.values() for record in views
            if record.path not in scored]
    write_failures(failures_path, failures)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = MamaModel.from_pretrained(args.model).to(device)
    scorer = ZeroShotScorer(model, MamaProcessor.from_pretrained(args.model), args.task)
    started = time.perf_counter()
    new_rows: list[dict] = []
    journal = Journal(journal_path)
    try:
        with tqdm(total=len(todo), desc=f"scoring {args.task}", unit="img", disable=args.no_progress) as bar:
            for start in range(0, len(todo), args.batch_size):
                batch = todo[start:start + args.batch_size]
                rows, batch_failures = score_batch(scorer, batch)
                journal.append(rows)
                new_rows += rows
                if batch_failures:
                    failures += batch_failures
                    write_failures(failures_path, failures)
                bar.update(len(batch))
    finally:
        journal.close()
    elapsed = time.perf_counter() - started

    image_rows = done + new_rows
    rows = aggregate_rows(image_rows, class_names, how=args.aggregate)
    write_predictions(output, rows, args.format, args.task, class_names, args.model)
    journal_path.unlink(missing_ok=True)
    summary = {
        "output": str(output), "failures": str(failures_path), "scored": len(new_rows), "skipped": len(done),
        "failed": len(failures), "images": len(image_rows),
        "breasts": sum(row["level"] == "breast" for row in rows), "exams": sum(row["level"] == "exam" for row in rows),
        "seconds": round(elapsed, 2), "images_per_second": round(len(todo) / elapsed, 2) if elapsed > 0 else None,
    }
    print(f"{summary['images']} images ({summary['scored']} scored now, {summary['skipped']} from an earlier run), "
          f"{summary['breasts']} breasts, {summary['exams']} exams -> {output}; "
          f"{summary['failed']} files in {failures_path.name}")
    return summary


if __name__ == "__main__":
    main()
