"""The default demo (`python examples/pretrain.py`) over several seeds: zero-shot figures per seed, their
mean and range, and a repeat of the first seed that must give the same figures and weights.

Each run is a fresh process with the demo's own arguments and `--seed S` (the seed also draws the
synthetic look-alike, cached per seed under `~/.cache/modeling_mama`). On one machine, runs with the
same seed are bitwise identical; the figures change with the seed, and with the number of torch
threads (float reductions are split by thread), so compare runs on machines with the same core count.

Run: `python bench/bench_demo_seeds.py [--seeds 42 0 1] [--no-repeat] [-- PRETRAIN OPTIONS]` (options after
`--` are added to the demo's, e.g. `-- --max_steps 20` for a quick check); a demo run takes 2-4
minutes on 2 idle cores, and much longer when other jobs share them (the load average is printed
with every run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))

from pretrain import DEMO_ARGUMENTS  # noqa: E402  (examples/ is not a package)

METRICS = ("balanced_accuracy", "auc")


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def run_demo(seed: int, output_dir: Path, extra: list[str]) -> tuple[dict, str]:
    """Zero-shot results of one demo run and the SHA-1 of its weights."""
    arguments = [*DEMO_ARGUMENTS, "--seed", str(seed), "--output_dir", str(output_dir), "--disable_tqdm", "true",
                 *extra]
    start, started_load = time.time(), load()
    subprocess.run([sys.executable, str(REPO / "examples" / "pretrain.py"), *arguments], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = json.loads((output_dir / "results.json").read_text())["zero_shot"]
    weights = hashlib.sha1((output_dir / "model.safetensors").read_bytes()).hexdigest()[:12]
    figures = "  ".join(f"{task} bACC {values['balanced_accuracy']:.3f} AUC {values['auc']:.3f}"
                        for task, values in results.items())
    print(f"seed {seed}: {figures}  weights {weights}  ({time.time() - start:.0f} s, load {started_load} -> {load()})",
          flush=True)
    return results, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    parser.add_argument("--no-repeat", action="store_true", help="skip the second run of the first seed")
    parser.add_argument("extra", nargs="*", help="options added to the demo's (after --)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        runs = {seed: run_demo(seed, Path(scratch) / f"seed{seed}", args.extra) for seed in args.seeds}
        if not args.no_repeat:
            seed = args.seeds[0]
            again = run_demo(seed, Path(scratch) / f"seed{seed}-again", args.extra)
            same = again == runs[seed]
            print(f"seed {seed} run twice: {'identical figures and weights' if same else 'DIFFERENT'}")
    for task in runs[args.seeds[0]][0]:
        for metric in METRICS:
            values = [results[task][metric] for results, _ in runs.values()]
            print(f"{task} {metric}: mean {statistics.mean(values):.3f}, range {min(values):.3f}-{max(values):.3f} "
                  f"over seeds {', '.join(map(str, args.seeds))}")


if __name__ == "__main__":
    main()
