"""The paper's loss ablation and a benchmark where scale matters, on synthetic data, with the pointing game.

    python examples/ablation.py --output_dir runs/ablation                      # every study, seeds 0 1 2
    python examples/ablation.py --output_dir runs/ablation --studies losses --seeds 0 1 2

Three studies. Each generates and converts its synthetic EMBED look-alike on first use (cached under
`--cache_dir`), and every pre-training run is a tiny-preset `examples/pretrain.py` run with the same
recipe, changing only what the study compares:

- `oracle` checks the premise of the scale benchmark, without training. On the micro-calcification
  benchmark (`generate_embed(microcalcifications=0.5)`: by default 60 exams of 1024 x 800 images
  (`--micro_image_size`; the paper's full field is about 2048 x 1600), clusters of 2-3 px faint dots on
  half of the breasts) a fixed dot detector (Hessian blobness: its highest values, how many peaks pass
  a threshold, how many crowd into one window) feeds a logistic regression (cross-validated AUC) from
  either the global view (the pre-training size, and 518 x 518 as in the paper when the images are
  larger) or the breast's full-resolution tiles of the pre-training size (features max-pooled over them).
- `scale`: global-only vs `--tiles` pre-training on that benchmark (same steps, batch and seeds), then
  zero-shot detection: each test image is scored with the paper's BI-RADS 1 and BI-RADS 4 prompts (in
  this benchmark BI-RADS 4 means "micro-calcifications in this breast"), on its global view and tiled
  (the highest tile score of the breast's tiles), and the pointing game of the calcification sentence
  on the global view and on the tiles stitched back together.
- `losses`: the paper's ablation (CLIP only, + multi-view, + SLA, full MaMA; pretrain.py's loss weights
  set to 0 for the terms left out) on the usual look-alike mix: zero-shot density and BI-RADS, and the
  pointing game: for every held-out image (validation + test) whose report describes a finding the
  radiologist marked (EMBED `ROI_coords`), does the heat map of the sentence describing it (the
  calcification sentence, else the mass sentence, else the findings sentence) peak inside the ROI?
  Trained model vs the same architecture untrained vs a uniform random pointer.

The defaults are sized for a 2-core CPU (9 min for everything on an idle machine, see the README): a
64-wide tiny preset; the loss ablation 40 steps per run at 64 px (batch 16); the scale study 30 steps at
112 px views and 112 px tiles (at most 4 per item, batch 8). That budget tests the pipeline and
gives a first reading, not the paper's numbers; raise `--*_steps`, `--*_image_size` and
`--micro_image_size` on a bigger machine. The premise of the scale study holds clearly only at the
paper's full-field size (`--micro_image_size 2048 1600`: oracle AUC 0.90 on tiles vs 0.66 on the 518
view; at the default 1024 x 800, 0.71 vs 0.59).

Writes `ablation.json` (settings, every run's numbers, wall times, machine load), `ablation.md` (the
tables the README shows) and `ablation.png` into `--output_dir`. Finished runs are kept under
`<output_dir>/runs/<study>/<variant>-seed<k>/` with their `evaluation.json`, so an interrupted ablation
resumes where it stopped; `--report_only` writes the tables from the finished runs alone.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

LOSS_VARIANTS = {  # the paper's ablation: the terms each variant trains (weights of examples/pretrain.py)
    "CLIP": {"multiview_loss_weight": 0, "symmetric_clip_loss_weight": 0, "local_loss_weight": 0},
    "+multi-view": {"local_loss_weight": 0},
    "+SLA": {"multiview_loss_weight": 0, "symmetric_clip_loss_weight": 0},
    "MaMA": {},
}
LOSS_TERMS_OF = {"CLIP": "clip", "+multi-view": "clip + NT-Xent + symmetric CLIP", "+SLA": "clip + SLA",
                 "MaMA": "all four"}
SCALE_VARIANTS = ("global", "tiles")
STUDIES = ("oracle", "scale", "losses")
MICRO_FRACTION = 0.5
ORACLE_SIZES = (518,)  # global views of the oracle besides the pre-training size
BLOB_SCALES = (0.7, 1.0, 1.5)  # dot detector scales (Gaussian sigma), in pixels of its input
ORACLE_THRESHOLDS = (2.0, 3.0, 5.0)  # in units of the 99th percentile of the breast's response


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/ablation")
    parser.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=None,
                        help=f"Only these variants ({', '.join(LOSS_VARIANTS)}; {', '.join(SCALE_VARIANTS)}).")
    parser.add_argument("--report_only", action="store_true",
                        help="Write the tables from the runs already finished in --output_dir; train nothing.")
    parser.add_argument("--cache_dir", default=os.path.join(os.path.expanduser("~"), ".cache", "modeling_mama", "ablation"))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="Data generation processes.")
    parser.add_argument("--hidden_size", type=int, default=64, help="Tiny preset width.")
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--late_loss_fraction", type=float, default=0.2,
                        help="The late terms start after this fraction of the steps (paper: 8000 / 40000).")
    # the losses study
    parser.add_argument("--losses_dataset", default=None,
                        help="A converted EMBED look-alike (default: generate one with --losses_exams exams).")
    parser.add_argument("--losses_exams", type=int, default=200)
    parser.add_argument("--losses_image_size", type=int, default=64)
    parser.add_argument("--losses_steps", type=int, default=40)
    parser.add_argument("--losses_batch_size", type=int, default=16)
    parser.add_argument("--losses_tasks", nargs="+", default=["density", "birads"], choices=["density", "birads"],
                        help="Zero-shot tasks of the losses study.")
    parser.add_argument("--pointing_limit", type=int, default=None, help="Score at most this many pointing images.")
    # the micro-calcification benchmark (oracle and scale studies)
    parser.add_argument("--micro_dataset", default=None,
                        help="A converted micro-calcification benchmark (default: generate one).")
    parser.add_argument("--micro_exams", type=int, default=60)
    parser.add_argument("--micro_image_size", type=int, nargs=2, default=[1024, 800], metavar=("ROWS", "COLUMNS"),
                        help="Full-field size of the benchmark's images (the paper's scale: 2048 1600).")
    parser.add_argument("--oracle_images", type=int, default=200, help="Images the oracle reads (all splits).")
    parser.add_argument("--scale_image_size", type=int, default=112, help="Global view and tile side.")
    parser.add_argument("--scale_steps", type=int, default=30)
    parser.add_argument("--scale_batch_size", type=int, default=8)
    parser.add_argument("--max_tiles", type=int, default=4, help="Random breast tiles per training item (--tiles).")
    args = parser.parse_args(argv)
    known = set(LOSS_VARIANTS) | set(SCALE_VARIANTS)
    if args.variants and set(args.variants) - known:
        parser.error(f"unknown variant(s) {sorted(set(args.variants) - known)}; choose from {sorted(known)}")
    if not 0.0 <= args.late_loss_fraction < 1.0:
        parser.error("--late_loss_fraction must be in [0, 1)")
    return args


# ------------------------------------------------------------------------------------------- datasets
def losses_dataset(args) -> Path:
    """The usual EMBED look-alike mix, 2D images stored at 256 px."""
    if args.losses_dataset:
        return Path(args.losses_dataset)
    from modeling_mama.data.converters.embed import convert_embed
    from modeling_mama.data.synthetic import generate_embed

    raw = Path(args.cache_dir) / f"embed-{args.losses_exams}-seed42"
    converted = raw.with_name(raw.name + "-converted")
    if not (converted / "dataset_dict.json").exists():
        generate_embed(raw, num_exams=args.losses_exams, seed=42, workers=args.workers)
        convert_embed(raw, converted, image_size=256, workers=args.workers, seed=42)
    return converted


def micro_dataset(args) -> Path:
    """The micro-calcification benchmark, stored at full resolution (the dots do not survive shrinking)."""
    if args.micro_dataset:
        return Path(args.micro_dataset)
    from modeling_mama.data.converters.embed import convert_embed
    from modeling_mama.data.synthetic import generate_embed

    height, width = args.micro_image_size
    raw = Path(args.cache_dir) / f"microcalc-{args.micro_exams}-{height}x{width}-p{MICRO_FRACTION}-seed0"
    converted = raw.with_name(raw.name + "-converted")
    if not (converted / "dataset_dict.json").exists():
        generate_embed(raw, num_exams=args.micro_exams, image_size=(height, width), seed=0, workers=args.workers,
                       microcalcifications=MICRO_FRACTION)
        convert_embed(raw, converted, image_size=max(height, width), workers=args.workers, seed=0)
    return converted


def generated_size(converted: Path) -> tuple[int, int]:
    """(rows, columns) of the images of the look-alike a converted dataset came from."""
    settings = json.loads((raw_root(converted) / ".synthetic.json").read_text())
    return tuple(settings["image_size"])


def raw_root(converted: Path) -> Path:
    """The look-alike a converted dataset came from (its tables hold the ROIs)."""
    record = json.loads((Path(converted) / "conversion.json").read_text())
    return Path(record["root"])


def lesion_rois(converted: Path) -> dict[str, np.ndarray]:
    """image_id -> the image's ROIs as float [K, 4] `(x0, y0, x1, y1)` in its DICOM file's pixels.

    EMBED's `ROI_coords` are `(ymin, xmin, ymax, xmax)` tuples on the 2D image."""
    metadata = pd.read_csv(raw_root(converted) / "tables" / "EMBED_OpenData_metadata.csv",
                           usecols=["anon_dicom_path", "FinalImageType", "num_roi", "ROI_coords"])
    rois = {}
    for row in metadata[(metadata.FinalImageType == "2D") & (metadata.num_roi > 0)].itertuples():
        image_id = Path(row.anon_dicom_path).name.removesuffix(".dcm")
        boxes = [(x0, y0, x1, y1) for y0, x0, y1, x1 in ast.literal_eval(row.ROI_coords)]
        rois[image_id] = np.asarray(boxes, dtype=np.float64)
    return rois


# ------------------------------------------------------------------------------------ pre-training runs
def load_pretrain():
    """examples/pretrain.py as a module (the examples are scripts, not a package)."""
    name = "mama_example_pretrain"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("pretrain.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the script runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def pretrain_run(args, dataset: Path, run_dir: Path, *, seed: int, image_size: int, steps: int, batch_size: int,
                 extra: list[str]) -> dict:
    """One tiny-preset pre-training run (skipped when its folder already holds a finished run)."""
    record = run_dir / "run.json"
    if record.exists():
        return json.loads(record.read_text())
    argv = [
        "--dataset", str(dataset), "--output_dir", str(run_dir), "--preset", "tiny", "--image_size", str(image_size),
        "--hidden_size", str(args.hidden_size), "--max_steps", str(steps),
        "--per_device_train_batch_size", str(batch_size), "--learning_rate", str(args.learning_rate),
        "--weight_decay", "0.05", "--warmup_steps", str(max(1, steps // 20)), "--lr_scheduler_type", "cosine",
        "--late_loss_step", str(int(args.late_loss_fraction * steps)), "--augmentation", "mild",
        "--logging_steps", str(max(1, steps // 5)), "--save_strategy", "no", "--report_to", "none",
        "--dataloader_num_workers", "1", "--seed", str(seed), "--disable_tqdm", "true", "--eval_tasks", "",
        *extra,
    ]
    started = time.time()
    results = load_pretrain().main(argv)
    run = {"argv": argv, "train_seconds": round(time.time() - started, 1), "load_after": load_average(),
           "train_loss": results["train"].get("train_loss")}
    write_json(record, run)
    return run


def loss_arguments(variant: str) -> list[str]:
    return [item for name, weight in LOSS_VARIANTS[variant].items() for item in (f"--{name}", str(weight))]


def load_run(run_dir: Path):
    from modeling_mama import MamaModel, MamaProcessor

    return MamaModel.from_pretrained(run_dir).eval(), MamaProcessor.from_pretrained(run_dir)


def untrained_like(model, seed: int):
    """The same architecture with freshly initialised weights (the pointing game's untrained baseline)."""
    from modeling_mama import MamaModel

    torch.manual_seed(seed)
    return MamaModel(model.config).eval()


# ------------------------------------------------------------------------------------- pointing game
def finding_sentence(sentences: list[str]) -> int | None:
    """Index of the sentence that describes the finding: the calcification sentence, else the mass
    sentence, else the BI-RADS findings sentence (None when the report has none of them)."""
    rules = (lambda s: s.startswith("A ") and s.endswith("calcification is present."),
             lambda s: s.startswith("The mass is "),
             lambda s: s.startswith("Findings:"))
    for rule in rules:
        for index, sentence in enumerate(sentences):
            if rule(sentence):
                return index
    return None


def pointing_targets(split, rois: dict[str, np.ndarray]) -> list[dict]:
    """Held-out rows whose report describes a finding with an ROI on their image."""
    from modeling_mama.reports import build_report
    from modeling_mama.training.multiview import report_fields_from_row

    targets = []
    for row in split.remove_columns("image"):
        boxes = rois.get(row["image_id"])
        if boxes is None:  # no marked finding on this image
            continue
        sentences = build_report(report_fields_from_row(row))
        index = finding_sentence(sentences)
        if index is not None:
            targets.append({"source_path": row["source_path"], "laterality": row["laterality"],
                            "sentences": sentences, "sentence": index, "boxes": boxes})
    return targets


@torch.no_grad()
def sentence_maps(models: dict, processor, target: dict, *, mode: str, **image_kwargs) -> dict:
    """Per model, the heat map of the target sentence over the view (global) or the stitched tiles,
    and the target's boxes in the same frame: {name: (map, boxes)}."""
    from modeling_mama.image_utils_mama import boxes_to_view
    from modeling_mama.training.visualization import patch_sentence_similarity

    inputs = processor(images=target["source_path"], text=[target["sentences"]], mode=mode, return_geometry=True,
                       laterality=target["laterality"], **image_kwargs)
    crop_box, flipped = inputs["crop_boxes"][0].numpy(), bool(inputs["flipped"][0])
    text = {key: inputs[key] for key in ("input_ids", "attention_mask", "sentence_positions", "sentence_mask")}
    maps = {}
    if mode == "global":
        height, width = inputs["pixel_values"].shape[-2:]
        boxes = boxes_to_view(target["boxes"], crop_box, flipped, (height, width))
        for name, model in models.items():
            similarity = patch_sentence_similarity(model, inputs["pixel_values"], **text)[target["sentence"]]
            maps[name] = (similarity, boxes, (height, width))
        return maps
    # Tiles: every breast tile's patch map, written back where the tile sits in the breast crop.
    crop_width, crop_height = crop_box[2] - crop_box[0], crop_box[3] - crop_box[1]
    frame = (round(crop_height), round(crop_width))
    tiles = inputs["tile_pixel_values"][0][inputs["tile_mask"][0]]
    tile_boxes = boxes_to_view(inputs["tile_boxes"][0][inputs["tile_mask"][0]].numpy(), crop_box, flipped, frame)
    tile_height, tile_width = tiles.shape[-2:]
    if np.any(tile_boxes[:, 2] - tile_boxes[:, 0] > tile_width + 1) or np.any(
            tile_boxes[:, 3] - tile_boxes[:, 1] > tile_height + 1):
        raise ValueError("The tile grid does not cover the breast at full resolution; give a larger tile grid.")
    boxes = boxes_to_view(target["boxes"], crop_box, flipped, frame)
    for name, model in models.items():
        patches, _ = model.get_patch_embeddings(tiles)
        sentences, mask = model.get_sentence_embeddings(**text)
        sentence = sentences[0][mask[0]][target["sentence"]]
        rows = tile_height // model.config.vision_config.patch_size
        cells = torch.einsum("tpd,d->tp", patches, sentence).reshape(len(tiles), rows, -1).numpy()
        stitched = np.full(frame, -np.inf)
        for cell_map, (x0, y0, x1, y1) in zip(cells, tile_boxes):
            pixels = np.kron(cell_map, np.ones((tile_height // cell_map.shape[0], tile_width // cell_map.shape[1])))
            top, left = round(y0), round(x0)
            region = stitched[top:top + round(y1 - y0), left:left + round(x1 - x0)]
            np.maximum(region, pixels[:region.shape[0], :region.shape[1]], out=region)
        stitched[~np.isfinite(stitched)] = stitched[np.isfinite(stitched)].min() - 1.0
        maps[name] = (stitched, boxes, frame)
    return maps


def pointing_scores(models: dict, processor, targets: list[dict], *, mode: str = "global", **image_kwargs) -> dict:
    """The pointing game of every model on `targets`, plus the uniform random pointer."""
    from modeling_mama.training.metrics import pointing_game

    collected = {name: ([], [], []) for name in models}
    for target in targets:
        for name, (heat_map, boxes, size) in sentence_maps(models, processor, target, mode=mode,
                                                           **image_kwargs).items():
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            if keep.any():
                for store, value in zip(collected[name], (heat_map, boxes[keep], size)):
                    store.append(value)
    scores = {}
    for name, (maps, boxes, sizes) in collected.items():
        if not maps:
            return {"num_images": 0}
        result = pointing_game(maps, boxes, image_sizes=sizes)
        scores[name] = result["accuracy"]
        scores["random"] = result["random_accuracy"]
        scores["num_images"] = result["num_images"]
    return scores


# ----------------------------------------------------------------------------------------- zero-shot
@torch.no_grad()
def detection_scores(model, processor, split, *, tiles: bool, batch_size: int = 8, **image_kwargs):
    """Micro-calcification detection, zero-shot: P(BI-RADS 4 prompt) against the BI-RADS 1 prompt
    (paper protocol prompts with each image's metadata, `ZeroShotScorer`'s), on the global view or, tiled,
    the highest over the breast's tiles (an image without a breast tile keeps its global score).
    Returns (scores, labels) for the rows labelled BI-RADS 1 or 4."""
    from modeling_mama.training.converted import stored_image_options
    from modeling_mama.training.multiview import report_fields_from_row
    from modeling_mama.zero_shot_scoring import (
        ZeroShotScorer,
        aggregate_scores,
        normalized_image_features,
    )

    scorer = ZeroShotScorer(model, processor, "birads", tiles=tiles)
    pair = [scorer.class_names.index("BI-RADS 1"), scorer.class_names.index("BI-RADS 4")]
    scale = model.clamped_scales()[0].exp().float()
    rows = [index for index, birads in enumerate(split["birads"]) if birads in (1, 4)]
    options = {**stored_image_options(split), **image_kwargs}
    scores, labels = [], []
    for start in range(0, len(rows), batch_size):
        batch_rows = [split[index] for index in rows[start:start + batch_size]]
        fields = [report_fields_from_row(row) for row in batch_rows]
        inputs = scorer.preprocess([row["image"] for row in batch_rows], fields, **options)
        prompts = scorer.prompt_embeddings(fields)[:, pair]  # [N, 2, D]
        image_embeds = normalized_image_features(model, inputs["pixel_values"]).float()
        batch_scores = (scale * torch.einsum("nd,ncd->nc", image_embeds, prompts)).softmax(-1)[:, 1].numpy()
        if tiles:
            tile_mask = inputs["tile_mask"].bool()
            owners = tile_mask.nonzero()[:, 0]
            if len(owners):
                tile_embeds = normalized_image_features(model, inputs["tile_pixel_values"][tile_mask]).float()
                tile_scores = (scale * torch.einsum("td,tcd->tc", tile_embeds, prompts[owners])).softmax(-1)[:, 1]
                images, highest = aggregate_scores(tile_scores.numpy(), owners.numpy(), how="max")
                batch_scores[np.asarray(images, dtype=np.int64)] = highest
        scores += batch_scores.tolist()
        labels += [int(row["birads"] == 4) for row in batch_rows]
    return np.asarray(scores), np.asarray(labels)


def calcification_sentences() -> list[str]:
    """The benchmark's calcification sentences (METHOD.md section 3), one per morphology x distribution."""
    from modeling_mama.reports import findings_sentences

    return [findings_sentences(4, calc_find=morphology, calc_distribution=distribution)[1]
            for morphology in ("Fine pleomorphic", "Amorphous", "Punctate") for distribution in ("Clustered", "Grouped")]


@torch.no_grad()
def local_detection_scores(model, processor, split, *, tiles: bool, batch_size: int = 8, **image_kwargs):
    """Micro-calcification detection with the local (SLA) heads, zero-shot: the highest patch-sentence
    similarity between any patch (of the global view, or of every breast tile) and any of the
    benchmark's calcification sentences. Returns (scores, labels) for the rows labelled BI-RADS 1 or 4."""
    from modeling_mama.training.converted import stored_image_options

    text = processor(text=[calcification_sentences()])
    sentences, mask = model.get_sentence_embeddings(text["input_ids"], text["attention_mask"],
                                                    text["sentence_positions"], text["sentence_mask"])
    sentences = sentences[0][mask[0]]
    rows = [index for index, birads in enumerate(split["birads"]) if birads in (1, 4)]
    options = {**stored_image_options(split), **image_kwargs}
    scores, labels = [], []
    for start in range(0, len(rows), batch_size):
        batch_rows = [split[index] for index in rows[start:start + batch_size]]
        inputs = processor.image_processor([row["image"] for row in batch_rows], mode="tiles" if tiles else "global",
                                           laterality=[row["laterality"] for row in batch_rows], **options)
        for index in range(len(batch_rows)):
            views = inputs["tile_pixel_values"][index][inputs["tile_mask"][index]] if tiles else None
            if views is None or not len(views):
                views = inputs["pixel_values"][index:index + 1]
            patches, _ = model.get_patch_embeddings(views)
            scores.append(float(torch.einsum("tpd,sd->tps", patches, sentences).max()))
        labels += [int(row["birads"] == 4) for row in batch_rows]
    return np.asarray(scores), np.asarray(labels)


def zero_shot_summary(model, processor, split, tasks=("density", "birads")) -> dict:
    from modeling_mama.training.zero_shot import evaluate_zero_shot

    summary = {}
    for task in tasks:
        metrics = evaluate_zero_shot(model, processor, split, task, progress=False)
        summary[task] = {"balanced_accuracy": metrics["balanced_accuracy"], "auc": metrics["auc"],
                         "num_images": metrics["num_images"], "chance": 1.0 / len(metrics["class_counts"])}
    return summary


# --------------------------------------------------------------------------------------------- studies
def run_losses_study(args, output_dir: Path) -> dict:
    from datasets import concatenate_datasets, load_from_disk

    dataset = losses_dataset(args)
    splits = load_from_disk(str(dataset))
    held_out = concatenate_datasets([splits[name] for name in ("validation", "test") if name in splits])
    targets = pointing_targets(held_out, lesion_rois(dataset))[:args.pointing_limit]
    steps = args.losses_steps
    runs = []
    for variant in [v for v in LOSS_VARIANTS if not args.variants or v in args.variants]:
        for seed in args.seeds:
            run_dir = output_dir / "runs" / "losses" / f"{variant.strip('+')}-seed{seed}"
            if args.report_only and not (run_dir / "evaluation.json").exists():
                continue
            run = pretrain_run(args, dataset, run_dir, seed=seed, image_size=args.losses_image_size, steps=steps,
                               batch_size=args.losses_batch_size, extra=loss_arguments(variant))
            evaluation = run_dir / "evaluation.json"
            if evaluation.exists():
                scores = json.loads(evaluation.read_text())
            else:
                model, processor = load_run(run_dir)
                scores = {"zero_shot": zero_shot_summary(model, processor, splits["test"], tasks=args.losses_tasks),
                          "pointing": pointing_scores({"trained": model, "untrained": untrained_like(model, seed)},
                                                      processor, targets)}
                write_json(evaluation, scores)
            runs.append({"variant": variant, "seed": seed, **run, **scores})
            print(f"losses {variant} seed {seed}: density bACC {scores['zero_shot']['density']['balanced_accuracy']:.3f}, "
                  f"pointing {scores['pointing'].get('trained', float('nan')):.3f} "
                  f"(untrained {scores['pointing'].get('untrained', float('nan')):.3f}, "
                  f"random {scores['pointing'].get('random', float('nan')):.3f})", flush=True)
    return {"dataset": str(dataset), "steps": steps, "batch_size": args.losses_batch_size,
            "image_size": args.losses_image_size, "pointing_images": len(targets), "runs": runs}


def scale_grid(image_size: tuple[int, int], tile_size: int) -> list[int]:
    """A tile grid covering images of `image_size` (rows, columns) at full resolution."""
    return [math.ceil(side / tile_size) for side in image_size]


def run_scale_study(args, output_dir: Path) -> dict:
    from datasets import load_from_disk

    dataset = micro_dataset(args)
    splits = load_from_disk(str(dataset))
    test = splits["test"]
    size = args.scale_image_size
    grid = scale_grid(generated_size(dataset), size)
    tile_options = {"tile_size": size, "tile_grid": grid}
    targets = pointing_targets(test, lesion_rois(dataset))[:args.pointing_limit]
    runs = []
    for variant in [v for v in SCALE_VARIANTS if not args.variants or v in args.variants]:
        # The detection prompts carry every metadata section and three BI-RADS sentences: a wider budget.
        extra = ["--max_length", "256"]
        if variant == "tiles":
            extra += ["--tiles", "--max_tiles", str(args.max_tiles), "--tile_grid", f"{grid[0]},{grid[1]}"]
        for seed in args.seeds:
            run_dir = output_dir / "runs" / "scale" / f"{variant}-seed{seed}"
            if args.report_only and not (run_dir / "evaluation.json").exists():
                continue
            run = pretrain_run(args, dataset, run_dir, seed=seed, image_size=size, steps=args.scale_steps,
                               batch_size=args.scale_batch_size, extra=extra)
            evaluation = run_dir / "evaluation.json"
            if evaluation.exists():
                scores = json.loads(evaluation.read_text())
            else:
                model, processor = load_run(run_dir)
                models = {"trained": model, "untrained": untrained_like(model, seed)}
                scores = {"zero_shot": zero_shot_summary(model, processor, test, tasks=("density",)), "detection": {},
                          "pointing": {}}
                for inference in ("global", "tiles"):
                    detection, labels = detection_scores(model, processor, test, tiles=inference == "tiles",
                                                         **tile_options)
                    local, _ = local_detection_scores(model, processor, test, tiles=inference == "tiles",
                                                      **tile_options)
                    scores["detection"][inference] = {"auc": binary_auc(detection, labels),
                                                      "local_auc": binary_auc(local, labels),
                                                      "positives": int(labels.sum()), "images": len(labels)}
                    scores["pointing"][inference] = pointing_scores(models, processor, targets, mode=inference,
                                                                    **tile_options)
                write_json(evaluation, scores)
            runs.append({"variant": variant, "seed": seed, **run, **scores})
            print(f"scale {variant} seed {seed}: detection AUC global {scores['detection']['global']['auc']:.3f}, "
                  f"tiled {scores['detection']['tiles']['auc']:.3f}", flush=True)
    return {"dataset": str(dataset), "steps": args.scale_steps, "batch_size": args.scale_batch_size,
            "image_size": size, "tile_grid": grid, "max_tiles": args.max_tiles, "pointing_images": len(targets),
            "runs": runs}


def dot_features(pixels: np.ndarray) -> np.ndarray:
    """The oracle's fixed dot detector on one [H, W] image in [0, 1].

    A bright dot curves down in every direction, an edge (skin line, pectoral muscle) or a duct only
    across itself: the "blobness" is minus the larger eigenvalue of the Hessian (scale-normalised,
    positive only where both curvatures are negative), inside the breast away from the skin line, in
    units of its 99th percentile over the breast. Per scale: the highest responses, how many local
    peaks pass each threshold, and the most of them in one window (an eighth of the side: clusters).
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    inside = ndimage.binary_erosion(pixels > 0.1, iterations=6)  # fat is about 0.3, the background 0.03
    window = max(3, pixels.shape[0] // 8)
    features = []
    for sigma in BLOB_SCALES:
        if inside.sum() < 100:  # (almost) no breast in this image
            features += [0.0] * (3 + 2 * len(ORACLE_THRESHOLDS))
            continue
        h_xx = ndimage.gaussian_filter(pixels, sigma, order=(0, 2))
        h_yy = ndimage.gaussian_filter(pixels, sigma, order=(2, 0))
        h_xy = ndimage.gaussian_filter(pixels, sigma, order=(1, 1))
        larger = (h_xx + h_yy) / 2 + np.sqrt(((h_xx - h_yy) / 2) ** 2 + h_xy**2)
        blobness = np.where(inside, np.maximum(-larger, 0.0) * sigma**2, 0.0)
        blobness /= np.quantile(blobness[inside], 0.99) + 1e-9
        top = -np.sort(np.partition(-blobness.ravel(), 50)[:50])
        features += [top[0], top[:10].mean(), top.mean()]
        peaks = blobness == ndimage.maximum_filter(blobness, size=3)
        for threshold in ORACLE_THRESHOLDS:
            strong = (peaks & (blobness > threshold)).astype(np.float32)
            features += [strong.sum(), ndimage.uniform_filter(strong, size=window).max() * window**2]
    return np.asarray(features, dtype=np.float64)


def _patient_bootstrap(patients: np.ndarray, rng: np.random.Generator, count: int):
    """Row indices of `count` bootstrap samples that draw whole patients with replacement."""
    unique, codes = np.unique(patients, return_inverse=True)
    rows_of = [np.flatnonzero(codes == index) for index in range(len(unique))]
    for _ in range(count):
        yield np.concatenate([rows_of[index] for index in rng.integers(0, len(unique), len(unique))])


def run_oracle_study(args, output_dir: Path) -> dict:
    """Can a probe tell breasts with micro-calcifications from the others, from the global view or from tiles?"""
    from datasets import concatenate_datasets, load_from_disk
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from modeling_mama import MamaImageProcessor
    from modeling_mama.file_utils_mama import atomic_path
    from modeling_mama.training.converted import stored_image_options

    record = output_dir / "oracle_features.npz"
    dataset = micro_dataset(args)
    if record.exists():
        saved = np.load(record)
        features = {key.removeprefix("x_"): saved[key] for key in saved if key.startswith("x_")}
        labels, patients = saved["labels"], saved["patients"]
    else:
        splits = load_from_disk(str(dataset))
        rows = concatenate_datasets([splits[name] for name in ("train", "validation", "test")])
        rows = rows.filter(lambda birads: birads in (1, 4), input_columns="birads")
        rows = rows.shuffle(seed=0).select(range(min(args.oracle_images, len(rows))))
        options = stored_image_options(splits["train"])
        size = args.scale_image_size
        sizes = sorted({size, *(side for side in ORACLE_SIZES if side < min(generated_size(dataset)))})
        processors = {f"global {side}": MamaImageProcessor(size=side, do_normalize=False) for side in sizes}
        tiler = MamaImageProcessor(mode="tiles", size=size, tile_grid=scale_grid(generated_size(dataset), size),
                                   do_normalize=False)
        tiles_name = f"tiles {size}"
        collected = {name: [] for name in [*processors, tiles_name]}
        labels = []
        for row in rows:
            for name, processor in processors.items():
                view = processor(row["image"], **options)["pixel_values"][0, 0].numpy()
                collected[name].append(dot_features(view))
            tiles = tiler(row["image"], **options)["tile_pixel_values"][0, :, 0].numpy()
            breast_share = (tiles > 0.1).mean(axis=(1, 2))  # fat is about 0.3, the background 0.03
            tiles = tiles[breast_share >= min(0.05, breast_share.max())]  # every tile holding some breast
            collected[tiles_name].append(np.max([dot_features(tile) for tile in tiles], axis=0))
            labels.append(int(row["birads"] == 4))
        features = {name: np.asarray(values) for name, values in collected.items()}
        labels, patients = np.asarray(labels), np.asarray(rows["patient_id"])
        with atomic_path(record) as temporary, open(temporary, "xb") as stream:  # a stream: no ".npz" appended
            np.savez(stream, labels=labels, patients=patients,
                     **{f"x_{name}": values for name, values in features.items()})
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    # Folds by patient: the views of one breast share its texture, which would leak across folds.
    folds = StratifiedGroupKFold(5, shuffle=True, random_state=0)
    rng = np.random.default_rng(0)
    results = {}
    for name, values in features.items():
        scores = cross_val_predict(probe, values, labels, groups=patients, cv=folds, method="predict_proba")[:, 1]
        resampled = [binary_auc(scores[sample], labels[sample]) for sample in _patient_bootstrap(patients, rng, 1000)]
        low, high = np.nanpercentile(resampled, [2.5, 97.5])
        results[name] = {"auc": binary_auc(scores, labels), "ci95": [float(low), float(high)]}
        print(f"oracle {name}: AUC {results[name]['auc']:.3f} [{low:.3f}, {high:.3f}]", flush=True)
    return {"dataset": str(dataset), "images": len(labels), "positives": int(labels.sum()),
            "features": f"Hessian blobness at sigma {list(BLOB_SCALES)} px inside the breast: top 1/10/50 responses, "
                        f"peaks over {list(ORACLE_THRESHOLDS)} x its 99th percentile, densest 1/8-side window",
            "probe": "standardised features, L2 logistic regression (C=0.1), 5-fold CV stratified and grouped by "
                     "patient, bootstrap 95% CI",
            "inputs": results}


# ------------------------------------------------------------------------------------------- reports
def binary_auc(positive_scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of positive-class scores (nan when only one class is present)."""
    from modeling_mama.training.metrics import auc_score

    positive_scores = np.asarray(positive_scores, dtype=np.float64)
    return auc_score(np.stack([1.0 - positive_scores, positive_scores], axis=1), labels)


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def write_json(path: Path, value) -> None:
    from modeling_mama.file_utils_mama import write_json_atomic

    write_json_atomic(path, value, default=float)


def _mean_range(values, digits: int = 3) -> str:
    """Mean over seeds and their range, "mean (min-max)" (the value alone for one seed, "-" for none)."""
    values = np.asarray([value for value in values if value is not None and not np.isnan(value)], dtype=float)
    if not len(values):
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ({values.min():.{digits}f}-{values.max():.{digits}f})"


def _by_variant(runs: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for run in runs:
        grouped.setdefault(run["variant"], []).append(run)
    return grouped


def markdown_report(results: dict) -> str:
    """The tables of `ablation.md` (mean over seeds and the range, min-max; per-seed values in the JSON)."""
    lines = [f"Command: `{results['command']}`  ", (f"Seeds: {results['seeds']} (cells: mean over seeds (min-max)); wall time "
             f"{results['wall_time_seconds'] / 60:.1f} min; load average before / after: "
             f"{results['load_before']} / {results['load_after']} ({results['machine']}).")]
    oracle = results.get("oracle")
    if oracle:
        lines += ["", (f"**Oracle** ({oracle['images']} images, {oracle['positives']} with micro-calcifications): "
                      f"{oracle['probe']}; features: {oracle['features']}."), "",
                  "| probe input | AUC | 95% CI |", "|---|---|---|"]
        for name, value in oracle["inputs"].items():
            lines.append(f"| {name} | {value['auc']:.3f} | {value['ci95'][0]:.3f}-{value['ci95'][1]:.3f} |")
    scale = results.get("scale")
    if scale:
        lines += ["", (f"**Scale** (micro-calcification benchmark, {scale['steps']} steps x batch {scale['batch_size']}, "
                      f"global view {scale['image_size']} px, tiles {scale['image_size']} px at full resolution on a "
                      f"{scale['tile_grid'][0]}x{scale['tile_grid'][1]} grid, {scale['max_tiles']} random tiles per item "
                      f"with --tiles; pointing on {scale['pointing_images']} test images):"), "",
                  ("| pre-training | detection AUC: prompts, global view | prompts, tiled (max) "
                  "| SLA heads, global view | SLA heads, tiles | density bACC "
                  "| pointing, global view (untrained) | pointing, tiles (untrained) | random pointer (global / tiles) "
                  "| train time (s) |"),
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for variant, runs in _by_variant(scale["runs"]).items():
            pointing = {inference: (_mean_range([r["pointing"][inference].get("trained") for r in runs]),
                                    _mean_range([r["pointing"][inference].get("untrained") for r in runs]),
                                    _mean_range([r["pointing"][inference].get("random") for r in runs]))
                        for inference in ("global", "tiles")}
            detection = {(inference, key): _mean_range([r["detection"][inference].get(key) for r in runs])
                         for inference in ("global", "tiles") for key in ("auc", "local_auc")}
            lines.append(
                f"| {variant} | {detection['global', 'auc']} | {detection['tiles', 'auc']} "
                f"| {detection['global', 'local_auc']} | {detection['tiles', 'local_auc']} "
                f"| {_mean_range([r['zero_shot']['density']['balanced_accuracy'] for r in runs])} "
                f"| {pointing['global'][0]} ({pointing['global'][1]}) | {pointing['tiles'][0]} ({pointing['tiles'][1]}) "
                f"| {pointing['global'][2]} / {pointing['tiles'][2]} "
                f"| {_mean_range([r['train_seconds'] for r in runs], digits=0)} |")
    losses = results.get("losses")
    if losses:
        lines += ["", (f"**Losses** (the paper's ablation on the EMBED look-alike mix, {losses['steps']} steps x batch "
                      f"{losses['batch_size']} at {losses['image_size']} px; zero-shot on the test split; pointing on "
                      f"{losses['pointing_images']} held-out images with a marked finding):"), "",
                  ("| variant | loss terms | density bACC | density AUC | BI-RADS bACC | pointing, trained "
                  "| pointing, untrained | random pointer | train time (s) |"),
                  "|---|---|---|---|---|---|---|---|---|"]
        for variant, runs in _by_variant(losses["runs"]).items():
            lines.append(
                f"| {variant} | {LOSS_TERMS_OF[variant]} "
                f"| {_mean_range([r['zero_shot']['density']['balanced_accuracy'] for r in runs])} "
                f"| {_mean_range([r['zero_shot']['density']['auc'] for r in runs])} "
                f"| {_mean_range([r['zero_shot'].get('birads', {}).get('balanced_accuracy') for r in runs])} "
                f"| {_mean_range([r['pointing'].get('trained') for r in runs])} "
                f"| {_mean_range([r['pointing'].get('untrained') for r in runs])} "
                f"| {_mean_range([r['pointing'].get('random') for r in runs])} "
                f"| {_mean_range([r['train_seconds'] for r in runs], digits=0)} |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, path: Path) -> Path:
    """One panel per study: oracle AUCs, detection AUC per pre-training and inference, pointing per variant."""
    from modeling_mama.training.visualization import new_figure, save_figure

    panels = [name for name in STUDIES if results.get(name)]
    figure = new_figure(5.0 * max(1, len(panels)), 4.2)
    for position, name in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), position)
        study = results[name]
        if name == "oracle":
            names = list(study["inputs"])
            values = [study["inputs"][key]["auc"] for key in names]
            errors = np.array([[value - study["inputs"][key]["ci95"][0], study["inputs"][key]["ci95"][1] - value]
                               for key, value in zip(names, values)]).T
            axes.bar(names, values, yerr=errors, color="tab:gray", capsize=4)
            axes.axhline(0.5, linestyle="--", color="black", linewidth=1)
            axes.set_ylim(0, 1.02)
            axes.set_ylabel("cross-validated AUC")
            axes.set_title("oracle: dot detector + logistic regression", fontsize=9)
            continue
        grouped = _by_variant(study["runs"])
        if name == "scale":
            groups = [(variant, inference, key) for variant in grouped for inference in ("global", "tiles")
                      for key in ("auc", "local_auc")]
            for index, (variant, inference, key) in enumerate(groups):
                values = [run["detection"][inference].get(key, np.nan) for run in grouped[variant]]
                axes.bar(index, np.nanmean(values), color="tab:blue" if inference == "global" else "tab:orange",
                         alpha=0.6, hatch="//" if key == "local_auc" else None)
                axes.plot([index] * len(values), values, "ko", markersize=3)
            axes.set_xticks(range(len(groups)), [f"{v}\n{i}\n{'SLA' if k == 'local_auc' else 'prompts'}"
                                                 for v, i, k in groups], fontsize=6)
            axes.axhline(0.5, linestyle="--", color="black", linewidth=1)
            axes.set_ylim(0, 1.02)
            axes.set_ylabel("zero-shot detection AUC")
            axes.set_title("micro-calcifications: pre-training / inference / scorer", fontsize=9)
            continue
        variants = list(grouped)
        for offset, (key, colour) in enumerate((("trained", "tab:green"), ("untrained", "tab:gray"))):
            for index, variant in enumerate(variants):
                values = [run["pointing"].get(key, np.nan) for run in grouped[variant]]
                axes.bar(index + 0.4 * offset - 0.2, np.nanmean(values), width=0.4, color=colour,
                         label=key if index == 0 else None)
                axes.plot([index + 0.4 * offset - 0.2] * len(values), values, "ko", markersize=3)
        randoms = [run["pointing"].get("random", np.nan) for run in study["runs"]]
        axes.axhline(np.nanmean(randoms), linestyle="--", color="black", linewidth=1, label="random pointer")
        axes.set_xticks(range(len(variants)), variants)
        axes.set_ylim(0, 1.02)
        axes.set_ylabel("pointing accuracy")
        axes.legend(fontsize=7)
        axes.set_title("does the sentence's heat map peak in the lesion?", fontsize=9)
    return save_figure(figure, path)


def write_reports(results: dict, output_dir: Path) -> dict[str, Path]:
    """`ablation.json`, `ablation.md` and `ablation.png` in `output_dir`, each written all or nothing."""
    from modeling_mama.file_utils_mama import write_text_atomic

    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "ablation.json", results)
    markdown = write_text_atomic(output_dir / "ablation.md", markdown_report(results))
    return {"json": output_dir / "ablation.json", "markdown": markdown,
            "plot": plot_results(results, output_dir / "ablation.png")}


def main(argv=None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started, load_before = time.time(), load_average()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results = {"command": "python examples/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "seeds": args.seeds, "settings": vars(args), "load_before": load_before,
               "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}"}
    studies = {"oracle": run_oracle_study, "scale": run_scale_study, "losses": run_losses_study}
    for name in STUDIES:
        if name in args.studies:
            study_started = time.time()
            results[name] = studies[name](args, output_dir)
            results[name]["wall_time_seconds"] = round(time.time() - study_started, 1)
    results["wall_time_seconds"] = round(time.time() - started, 1)
    results["load_after"] = load_average()
    paths = write_reports(results, output_dir)
    print(markdown_report(results))
    print(f"-> {paths['markdown']}, {paths['json']}, {paths['plot']}")
    return results


if __name__ == "__main__":
    main()
