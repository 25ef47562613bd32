"""Pre-train MaMA on a converted mammography dataset.

    accelerate launch examples/pretrain.py --dataset DATA --output_dir OUT [--preset paper|tiny] [...]

With **no arguments** it runs the offline demo: it generates (or reuses) a synthetic EMBED look-alike
under `~/.cache/modeling_mama`, converts it with the EMBED converter, trains a byte-level BPE tokenizer
on its reports, pre-trains the tiny preset on the CPU, saves a complete model folder (model, processor,
card) in `outputs/pretrain-demo`, and prints zero-shot density and BI-RADS results on the held-out split.

The preset's training recipe (`modeling_mama.training.recipes`) gives the defaults of every
`TrainingArguments` option, and the command line overrides any of them (`--max_steps`,
`--per_device_train_batch_size`, `--bf16`, `--activation_checkpointing`, `--resume_from_checkpoint`,
...), as it does the loss knobs (`--late_loss_step`, `--local_loss_weight`, `--nt_xent_temperature`,
`--gather_with_grad`, ...). The paper preset builds MaMA from `facebook/dinov2-with-registers-base` and
`stanford-crfm/BioMedLM` (needs the Hub) with METHOD.md's recipe; see README for the multi-GPU launch configs.

`--tiles` (off by default and in the paper preset) adds the multi-scale extension: each training item
carries the global view (global and multi-view terms) plus up to `--max_tiles` tiles of the breast at
the stored resolution (tile side = `--image_size`; the grid covers the converter's `--image-size`,
or `--tile_grid ROWS,COLS`), and SLA aligns the report's sentences with the tiles' patches. The token
budget `--max_length` is saved with the processor; `--truncation warn` drops a too-long report's last
whole sentences instead of stopping.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer, HfArgumentParser, set_seed

from modeling_mama import (
    MamaConfig,
    MamaDataCollator,
    MamaImageProcessor,
    MamaModel,
    MamaProcessor,
    MamaTrainer,
    MamaTrainingArguments,
    MultiViewDataset,
)
from modeling_mama.hub import merge_datasets, write_model_card
from modeling_mama.reports import build_report
from modeling_mama.tokenization import (
    DEFAULT_MAX_LENGTH,
    TRUNCATION_MODES,
    add_special_tokens,
    train_report_tokenizer,
)
from modeling_mama.training.converted import load_converted, tile_grid
from modeling_mama.training.finetuning import write_json
from modeling_mama.training.multiview import report_fields_from_row
from modeling_mama.training.recipes import pretraining_recipe, recipe_settings
from modeling_mama.training.zero_shot import evaluate_zero_shot

logger = logging.getLogger("pretrain")

# The embedded default: what `python examples/pretrain.py` runs (tuned to finish in minutes on 2 CPU cores).
DEMO_ARGUMENTS = [
    "--preset", "tiny", "--output_dir", "outputs/pretrain-demo", "--image_size", "112",
    "--synthetic_exams", "120", "--num_train_epochs", "40", "--per_device_train_batch_size", "32",
    "--learning_rate", "2e-3", "--weight_decay", "0.05", "--warmup_steps", "20",
    "--lr_scheduler_type", "cosine", "--late_loss_step", "100", "--augmentation", "mild", "--logging_steps", "50",
    "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "1", "--seed", "42",
]

# Augmentation strengths. The paper's (crops down to 10% of the image, brightness/contrast jitter 0.8)
# suits 40k steps on real data; on a minutes-long run it hides the density signal, so the demo uses "mild".
AUGMENTATIONS = {
    "paper": None,
    "mild": {"crop_scale": [0.7, 1.0], "color_jitter": [0.1, 0.1, 0.0, 0.0], "color_jitter_p": 0.5,
             "grayscale_p": 0.0, "blur_p": 0.2},
}

@dataclass
class ModelArguments:
    preset: str = field(default="tiny", metadata={
        "help": "tiny (CPU demo / tests) or paper (METHOD.md); its training recipe becomes the defaults."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Continue from a saved MaMA folder."})
    vision_backbone: str = field(default="facebook/dinov2-with-registers-base")
    text_backbone: str = field(default="stanford-crfm/BioMedLM")
    tokenizer_name: str | None = field(default=None, metadata={"help": "Default: the text backbone's (paper) or a new BPE (tiny)."})
    image_size: int | None = field(default=None, metadata={"help": "Model input size (paper 518)."})
    hidden_size: int = field(default=64, metadata={"help": "Tiny preset width."})
    clip_loss_weight: float | None = None
    multiview_loss_weight: float | None = None
    symmetric_clip_loss_weight: float | None = None
    local_loss_weight: float | None = None
    local_loss_symmetric: bool | None = None
    nt_xent_temperature: float | None = None
    training_datasets: str | None = field(default=None, metadata={
        "help": "Comma-separated names added to the training data recorded in the config (what the datasets' "
                "conversion.json says, and a continued model's record, are always kept)."})


@dataclass
class DataArguments:
    dataset: list[str] | None = field(default=None, metadata={
        "help": "One or more folders written by data_scripts/*.py (several are concatenated split by split); "
                "default: the synthetic demo."})
    synthetic_exams: int = field(default=120, metadata={"help": "Exams in the synthetic demo set."})
    cache_dir: str = field(default=os.path.join(os.path.expanduser("~"), ".cache", "modeling_mama"))
    multiview_policy: str = field(default="same_exam", metadata={"help": "same_exam | ipsilateral | contralateral"})
    multiview_probability: float = 0.5
    mask_prob: float = 0.8
    augmentation: str = field(default="paper", metadata={"help": "paper | mild | none (training augmentation strength)."})
    max_length: int = field(default=DEFAULT_MAX_LENGTH,
                            metadata={"help": "Token budget of a report (saved with the processor)."})
    truncation: str = field(default="error", metadata={
        "help": "A report over --max_length: error | warn (drop its last whole sentences)."})
    tiles: bool = field(default=False, metadata={
        "help": "Multi-scale: add full-resolution tiles of the breast for SLA (off in the paper preset)."})
    max_tiles: int = field(default=4, metadata={"help": "Tiles per training item with --tiles (random, with breast)."})
    tile_grid: str | None = field(default=None, metadata={
        "help": "ROWS,COLS of the tile grid (default: covers the dataset's stored image size)."})
    eval_tasks: str = field(default="density,birads", metadata={"help": "Zero-shot tasks run on the test split at the end."})


def data_code_fingerprint() -> str:
    """A short hash of the code that writes the demo data (generator, converter, DICOM reader, breast
    geometry, reports), so a cached look-alike is only reused by the code that wrote it."""
    import hashlib

    import modeling_mama

    package = Path(modeling_mama.__file__).parent
    files = sorted((package / "data").rglob("*.py")) + [package / name for name in
                                                       ("dicom.py", "image_utils_mama.py", "reports.py")]
    digest = hashlib.sha1()
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def synthetic_dataset(data_args: DataArguments, seed: int) -> Path:
    """Generate and convert the synthetic EMBED look-alike once; later runs of the same code reuse it."""
    from modeling_mama.data.converters.embed import convert_embed
    from modeling_mama.data.synthetic import generate_embed

    name = f"synthetic-embed-{data_args.synthetic_exams}-seed{seed}-{data_code_fingerprint()}"
    raw = Path(data_args.cache_dir) / name
    converted = Path(data_args.cache_dir) / f"{name}-converted"
    if not (converted / "dataset_dict.json").exists():
        generate_embed(raw, num_exams=data_args.synthetic_exams, seed=seed, workers=min(2, os.cpu_count() or 1))
        convert_embed(raw, converted, image_size=256, workers=min(2, os.cpu_count() or 1), seed=seed)
    return converted


def build_tokenizer(model_args: ModelArguments, train_split):
    if model_args.tokenizer_name or model_args.preset == "paper":
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.text_backbone)
        add_special_tokens(tokenizer)
        return tokenizer
    # An offline tokenizer for the tiny preset: byte-level BPE trained on this dataset's reports.
    rows = train_split.remove_columns("image")
    sentences = [s for row in rows for s in build_report(report_fields_from_row(row))]
    return train_report_tokenizer(sentences, vocab_size=1024)


def build_config_overrides(model_args: ModelArguments) -> dict:
    overrides = {}
    for name in ("clip_loss_weight", "multiview_loss_weight", "symmetric_clip_loss_weight", "local_loss_weight",
                 "local_loss_symmetric", "nt_xent_temperature"):
        if getattr(model_args, name) is not None:
            overrides[name] = getattr(model_args, name)
    return overrides


def build_model(model_args: ModelArguments, tokenizer, image_size: int, overrides: dict,
                training_args: MamaTrainingArguments) -> MamaModel:
    if model_args.model_name_or_path:
        return MamaModel.from_pretrained(model_args.model_name_or_path, **overrides)
    if model_args.preset == "paper":
        # Checkpointing is the training arguments' call (the recipe turns it on; the command line decides).
        config = MamaConfig.paper(**{"activation_checkpointing": training_args.activation_checkpointing, **overrides})
        return MamaModel.from_backbones(model_args.vision_backbone, model_args.text_backbone,
                                        tokenizer=tokenizer, config=config)
    if model_args.preset != "tiny":
        raise ValueError(f"--preset must be 'tiny' or 'paper', got {model_args.preset!r}.")
    config = MamaConfig.tiny(vocab_size=len(tokenizer), image_size=image_size, hidden_size=model_args.hidden_size,
                             sentence_separator_token_id=tokenizer.sep_token_id, **overrides)
    return MamaModel(config)


def build_processor(data_args: DataArguments, tokenizer, image_size: int, dataset,
                    training_datasets: list[str] | None = None) -> MamaProcessor:
    """The processor every data path of the run uses (training items, collator, evaluation), saved with the
    model; it records the training data too, so its own upload paths are guarded like the model's."""
    if data_args.augmentation not in (*AUGMENTATIONS, "none"):
        raise ValueError(f"--augmentation must be one of {[*AUGMENTATIONS, 'none']}, got {data_args.augmentation!r}.")
    if data_args.truncation not in TRUNCATION_MODES:
        raise ValueError(f"--truncation must be one of {list(TRUNCATION_MODES)}, got {data_args.truncation!r}.")
    tile_options = {}
    if data_args.tiles:
        if data_args.max_tiles < 1:
            raise ValueError(f"--max_tiles must be at least 1, got {data_args.max_tiles}.")
        if data_args.tile_grid:
            try:
                grid = [int(value) for value in data_args.tile_grid.split(",")]
            except ValueError:
                grid = []
            if len(grid) != 2 or min(grid) < 1:
                raise ValueError(f"--tile_grid must be ROWS,COLS (positive integers), got {data_args.tile_grid!r}.")
        else:
            grid = tile_grid(dataset, image_size, default=[6, 3])
        tile_options = {"mode": "tiles", "tile_size": image_size, "tile_grid": grid, "max_tiles": data_args.max_tiles}
    image_processor = MamaImageProcessor(size={"height": image_size, "width": image_size},
                                         augmentation=AUGMENTATIONS.get(data_args.augmentation),
                                         training_datasets=training_datasets, **tile_options)
    return MamaProcessor(image_processor=image_processor, tokenizer=tokenizer, max_length=data_args.max_length,
                         training_datasets=training_datasets)


def print_table(results: dict[str, dict], title: str = "zero-shot on the held-out test split") -> None:
    print(f"\n{title}")
    print(f"{'task':10s} {'images':>7s} {'bACC':>7s} {'AUC':>7s} {'chance':>7s}")
    for task, metrics in results.items():
        chance = 1.0 / len(metrics["class_counts"])
        print(f"{task:10s} {metrics['num_images']:7d} {metrics['balanced_accuracy']:7.3f} "
              f"{metrics.get('auc', float('nan')):7.3f} {chance:7.3f}")


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, MamaTrainingArguments]:
    """Parse the command line over the preset's recipe (`training.recipes`).

    The recipe becomes the parser's defaults before `MamaTrainingArguments` is built, so what the
    accelerator is created from (mixed precision, DDP options) is what the preset says, and any flag
    on the command line overrides it.
    """
    preset_parser = argparse.ArgumentParser(add_help=False)
    preset_parser.add_argument("--preset", default=ModelArguments.preset)
    preset = preset_parser.parse_known_args(argv)[0].preset
    parser = HfArgumentParser((ModelArguments, DataArguments, MamaTrainingArguments))
    parser.set_defaults(**pretraining_recipe(preset))
    return parser.parse_args_into_dataclasses(argv)


def build_trainer(model: MamaModel, processor: MamaProcessor, train_dataset, training_args: MamaTrainingArguments,
                  data_args: DataArguments) -> MamaTrainer:
    """The `MamaTrainer` of a run (the tests build it around tiny models exactly as `main` does)."""
    return MamaTrainer(
        model=model, args=training_args, train_dataset=train_dataset,
        data_collator=MamaDataCollator(processor, truncation=data_args.truncation),
    )


def save_final_model(trainer: MamaTrainer, output_dir: str) -> None:
    """Save the trained model as one `from_pretrained` folder, also under FSDP.

    FSDP checkpoints stay sharded (`SHARDED_STATE_DICT` in examples/accelerate/fsdp.yaml: fast, resumable);
    the final folder gathers the full state dict so `MamaModel.from_pretrained` can read it.
    """
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(output_dir)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = list(DEMO_ARGUMENTS)
    model_args, data_args, training_args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    started = time.time()

    dataset_paths = [Path(path) for path in data_args.dataset or []]
    if not dataset_paths:
        with training_args.main_process_first(desc="synthetic data"):
            dataset_paths = [synthetic_dataset(data_args, training_args.seed)]
    splits, data_record = load_converted(dataset_paths)
    train_split = splits["train"]
    logger.info("datasets %s (%s): %s", [str(path) for path in dataset_paths], ", ".join(data_record),
                {name: len(split) for name, split in splits.items()})

    image_size = model_args.image_size or (518 if model_args.preset == "paper" else 112)
    tokenizer = build_tokenizer(model_args, train_split)
    overrides = build_config_overrides(model_args)
    model = build_model(model_args, tokenizer, image_size, overrides, training_args)
    # What the weights were trained on: a continued model's data, the datasets' own record, and any
    # names given on the command line (which can only add). Every upload path checks it.
    model.config.training_datasets = merge_datasets(model.config.training_datasets, data_record,
                                                    model_args.training_datasets)
    processor = build_processor(data_args, tokenizer, image_size, train_split, model.config.training_datasets)
    train_dataset = MultiViewDataset(
        train_split, processor, policy=data_args.multiview_policy,
        probability=data_args.multiview_probability, mask_prob=data_args.mask_prob, seed=training_args.seed,
        augment=data_args.augmentation != "none", sample_tiles=True,
    )
    trainer = build_trainer(model, processor, train_dataset, training_args, data_args)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_final_model(trainer, training_args.output_dir)
    results: dict = {"train": train_result.metrics}
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
        test_split = splits["test"] if "test" in splits else splits[list(splits)[-1]]
        zero_shot, zero_shot_tiles, skipped = {}, {}, {}
        for task in [t.strip() for t in data_args.eval_tasks.split(",") if t.strip()]:
            if task not in test_split.column_names or all(label is None for label in test_split[task]):
                # Said, not silently dropped: the user asked for this evaluation.
                skipped[task] = f"the test split has no {task} labels"
                logger.warning("Skipping the zero-shot %s evaluation: the test split of %s has no %r labels.", task,
                               ", ".join(str(path) for path in dataset_paths), task)
                continue
            zero_shot[task] = evaluate_zero_shot(model, processor, test_split, task, truncation=data_args.truncation)
            if data_args.tiles:
                zero_shot_tiles[task] = evaluate_zero_shot(model, processor, test_split, task, tiles=True,
                                                           truncation=data_args.truncation)
        results["zero_shot"] = zero_shot
        if data_args.tiles:
            results["zero_shot_tiles"] = zero_shot_tiles
        if skipped:
            results["zero_shot_skipped"] = skipped
        results["wall_time_seconds"] = round(time.time() - started, 1)
        output_dir = Path(training_args.output_dir)
        write_json(results, output_dir / "results.json")  # strict JSON: nan is null
        # The card written by save_model predates the results: render it again with them.
        settings = recipe_settings(training_args)
        if training_args.max_steps <= 0:
            settings["num_train_epochs"] = training_args.num_train_epochs
        write_model_card(output_dir, model.config, training_args=settings, results=results)
        print_table(zero_shot)
        if zero_shot_tiles:
            print_table(zero_shot_tiles, title="zero-shot on the held-out test split, tiles (cancer: max, else mean)")
        print(f"\nsaved to {training_args.output_dir} in {results['wall_time_seconds']} s")
    return results


if __name__ == "__main__":
    main()
