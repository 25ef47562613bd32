"""Peak memory of a training step per item vs K, the number of tiles per item (`pretrain.py --max_tiles`).

    python bench/bench_tiles.py [--ks 0,1,2,4] [--vision base|tiny] [--batch-size 2] [--no-checkpointing]

Each K runs in its own subprocess: build MaMA (the paper's ViT-B/14 image tower at 518 with `--vision
base`, a tiny one with `--vision tiny`; the text tower is tiny either way, since nothing on the text
side grows with K; activation checkpointing on, as in the paper preset), one warm-up step (it
allocates the AdamW state), then one measured step: forward + backward + AdamW with every loss
term on, over a batch of items each holding the 518 global
view, a second view, a 144-token budget report (8-11 sentences) and K tiles of 518 (K = 0: no tiles,
SLA on the global view's patches). The step's peak is the RSS high-water mark above the RSS before
the step (`/proc/self/clear_refs` resets the mark, Linux); the children run with a fixed glibc mmap
threshold and trim the heap before the step, so freed tensors leave the RSS and the mark measures
what the step allocates. Per item = step peak / batch size.

The table shows memory growing linearly with K (a tile costs about what a view costs), so `--max_tiles`
bounds it whatever the stored resolution; the last lines show what the cap saves: how many tiles a
full-field breast has at native resolution (what evaluation scores) vs the K a training item carries.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_k(args: argparse.Namespace, k: int) -> dict:
    import gc

    import numpy as np
    import torch

    from modeling_mama import MamaConfig, MamaModel
    from modeling_mama.reports import ReportFields, build_report
    from modeling_mama.tokenization import batch_tokenize_reports, train_report_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    fields = [ReportFields(procedure="MG Screening Bilateral", age=int(rng.integers(40, 80)), race="White",
                           laterality="L", view="CC", image_type="2D", density=int(rng.integers(1, 5)),
                           birads=int(rng.integers(0, 7))) for _ in range(args.batch_size)]
    reports = [build_report(f) for f in fields]
    tokenizer = train_report_tokenizer([s for report in reports * 20 for s in report], vocab_size=1024)
    text = batch_tokenize_reports(reports, tokenizer, max_length=144, pad_to_multiple_of=144)
    overrides = {"activation_checkpointing": args.checkpointing}
    if args.vision == "base":
        overrides["vision_config"] = MamaConfig.paper().vision_config.to_dict()
    config = MamaConfig.tiny(vocab_size=len(tokenizer), image_size=args.image_size, hidden_size=64,
                             sentence_separator_token_id=tokenizer.sep_token_id, **overrides)
    model = MamaModel(config).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    view = (args.batch_size, 3, args.image_size, args.image_size)
    batch = dict(pixel_values=torch.randn(view), extra_pixel_values=torch.randn(view), **text)
    if k:
        batch["tile_pixel_values"] = torch.randn(args.batch_size, k, 3, args.tile_size, args.tile_size)
        batch["tile_mask"] = torch.ones(args.batch_size, k, dtype=torch.bool)
    data_bytes = sum(value.element_size() * value.numel() for value in batch.values())

    def step() -> float:
        start = time.perf_counter()
        out = model(**batch, return_loss=True)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert "local" in out.loss_terms
        return time.perf_counter() - start

    step()  # warm-up: AdamW state, allocator pools
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed memory back, so the RSS is what is alive
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    seconds = step()
    peak = _rss_kib("VmHWM") - before
    return {"k": k, "step_peak_mib": peak / 1024, "per_item_mib": peak / 1024 / args.batch_size,
            "data_per_item_mib": data_bytes / 2**20 / args.batch_size, "seconds": seconds,
            "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}


def tiles_of_a_full_field_breast(tile_size: int, ks: list[int]) -> str:
    """Tiles at native resolution of a 3328x2560 synthetic breast (every one is scored at evaluation)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from dicom_factory import breast_pixels

    from modeling_mama.image_processing_mama import MamaImageProcessor

    pixels = breast_pixels(3328, 2560, laterality="L", bits_stored=16, seed=0)
    grid = [math.ceil(3328 / tile_size)] * 2
    processor = MamaImageProcessor(mode="tiles", size=64, tile_size=tile_size, tile_grid=grid)
    evaluation = int(processor(pixels)["tile_mask"].sum())
    sampled = [int(processor(pixels, sample_tiles=True, max_tiles=k, seed=0)["tile_mask"].sum()) for k in ks if k]
    return (f"a 3328x2560 breast at native resolution: {evaluation} tiles of {tile_size} hold breast (all scored at "
            f"evaluation); a training item carries {sampled} for K = {[k for k in ks if k]}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="0,1,2,4", help="comma-separated tile counts")
    parser.add_argument("--vision", choices=("base", "tiny"), default="base")
    parser.add_argument("--batch-size", type=int, default=2, help="at least 2 (BatchNorm of the heads)")
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--tile-size", type=int, default=518)
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                        help="no activation checkpointing (the paper preset has it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_k(args, args.child)))
        return
    ks = [int(k) for k in args.ks.split(",")]
    rows = []
    for k in ks:
        command = [sys.executable, __file__, "--child", str(k), "--vision", args.vision, "--batch-size",
                   str(args.batch_size), "--image-size", str(args.image_size), "--tile-size", str(args.tile_size),
                   "--threads", str(args.threads)] + ([] if args.checkpointing else ["--no-checkpointing"])
        # A fixed mmap threshold: glibc would otherwise raise it as large tensors are freed and keep
        # later ones on the heap, where a freed tensor stays in the RSS and hides the next step's peak.
        environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        output = subprocess.run(command, capture_output=True, text=True, check=True, env=environment).stdout
        rows.append(json.loads(output.splitlines()[-1]))
    print(f"vision {args.vision} ({rows[0]['parameters_m']:.1f}M parameters), batch {args.batch_size}, views "
          f"{args.image_size}, tiles {args.tile_size}, checkpointing {'on' if args.checkpointing else 'off'}, "
          f"{args.threads} threads")
    print(f"{'K':>3s} {'images/item':>12s} {'step peak MiB':>14s} {'per item MiB':>13s} {'x K=0':>6s} "
          f"{'data/item MiB':>14s} {'s/step':>7s}")
    base = rows[0]["per_item_mib"]
    for row in rows:
        print(f"{row['k']:3d} {2 + row['k']:12d} {row['step_peak_mib']:14.0f} {row['per_item_mib']:13.0f} "
              f"{row['per_item_mib'] / base:6.2f} {row['data_per_item_mib']:14.1f} {row['seconds']:7.1f}")
    if len(rows) > 1:
        slope = (rows[-1]["per_item_mib"] - rows[0]["per_item_mib"]) / max(rows[-1]["k"] - rows[0]["k"], 1)
        print(f"per tile: {slope:.0f} MiB per item (the K = {rows[0]['k']} -> {rows[-1]['k']} slope)")
    print(tiles_of_a_full_field_breast(args.tile_size, ks))


if __name__ == "__main__":
    main()
