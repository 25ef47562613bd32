"""Cost of the symmetric local alignment (SLA) loss relative to the plain CLIP loss.

Forward + backward at the paper's shapes: SLA with B=36 reports/images, P=1369 patches (37x37),
S=12 sentences, D=512; CLIP with B=36, D=512. Prints time and peak memory, and their ratios, for
SLA with automatic chunking and unchunked (one block of all images).

Peak memory is measured two ways:
* tensor peak: torch's `MemTracker` (torch.distributed._tools) follows every tensor allocated by the
  forward and backward (activations, saved tensors, temporaries, gradients);
* RSS growth: a fresh subprocess per measurement, peak resident set (`ru_maxrss`) minus the resident
  set just before the step; includes allocator overhead and one-off thread-pool buffers.

Usage: python bench/bench_losses.py [--repeats 3]
"""

import argparse
import math
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from modeling_mama.losses import contrastive_loss, local_alignment_loss

BATCH, N_PATCHES, N_SENTENCES, DIM = 36, 1369, 12, 512
MEASUREMENTS = {
    "clip": "CLIP loss, B=36, D=512",
    "sla_auto": "SLA, automatic chunks",
    "sla_unchunked": "SLA, unchunked (chunk_size=36)",
}


def make_step(name: str):
    """A closure running one forward + backward of loss `name` on fresh random leaf inputs."""
    generator = torch.Generator().manual_seed(0)
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    if name == "clip":
        image = F.normalize(torch.randn(BATCH, DIM, generator=generator), dim=-1).requires_grad_(True)
        text = F.normalize(torch.randn(BATCH, DIM, generator=generator), dim=-1).requires_grad_(True)
        return lambda: contrastive_loss(image, text, scale).backward()
    patches = F.normalize(torch.randn(BATCH, N_PATCHES, DIM, generator=generator), dim=-1).requires_grad_(True)
    sentences = F.normalize(torch.randn(BATCH, N_SENTENCES, DIM, generator=generator), dim=-1).requires_grad_(True)
    lengths = torch.randint(1, N_SENTENCES + 1, (BATCH,), generator=generator)
    sentence_mask = torch.arange(N_SENTENCES)[None, :] < lengths[:, None]
    chunk_size = BATCH if name == "sla_unchunked" else None

    def step():
        patches.grad = sentences.grad = scale.grad = None
        local_alignment_loss(patches, sentences, sentence_mask, scale, chunk_size=chunk_size).backward()

    return step


def best_seconds(step, repeats: int) -> float:
    """Fastest of `repeats` runs: the least disturbed by other work on shared cores."""
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def tensor_peak_bytes(step) -> float | None:
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        return None
    tracker = MemTracker()
    with tracker:
        step()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def rss_growth_child(name: str) -> None:
    """Run in a fresh process: print peak RSS growth (bytes) of one step."""
    step = make_step(name)
    before = resident_bytes()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(max(0, peak - before))


def rss_growth_bytes(name: str) -> int:
    output = subprocess.run([sys.executable, __file__, "--rss-child", name], check=True,
                            capture_output=True, text=True).stdout
    return int(output.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-child", choices=sorted(MEASUREMENTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_growth_child(args.rss_child)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"SLA B={BATCH} P={N_PATCHES} S={N_SENTENCES} D={DIM}")
    rows = {}
    for name, label in MEASUREMENTS.items():
        step = make_step(name)
        rows[name] = {"label": label, "seconds": best_seconds(step, args.repeats),
                      "tensor_peak": tensor_peak_bytes(step), "rss_growth": rss_growth_bytes(name)}
        del step

    mib = 2 ** 20
    full_block = BATCH * BATCH * N_PATCHES * N_SENTENCES * 4
    print(f"one full [B,B,P,S] fp32 similarity tensor = {full_block / mib:.1f} MiB")
    print(f"{'measurement':34s} {'fwd+bwd s':>10s} {'tensor peak MiB':>16s} {'RSS growth MiB':>15s}")
    for row in rows.values():
        tensor_peak = "n/a" if row["tensor_peak"] is None else f"{row['tensor_peak'] / mib:.2f}"
        print(f"{row['label']:34s} {row['seconds']:10.4f} {tensor_peak:>16s} {row['rss_growth'] / mib:15.1f}")

    clip = rows["clip"]
    for name in ("sla_auto", "sla_unchunked"):
        row = rows[name]
        ratios = [f"time x{row['seconds'] / clip['seconds']:.0f}"]
        if row["tensor_peak"] is not None and clip["tensor_peak"]:
            ratios.append(f"tensor peak x{row['tensor_peak'] / clip['tensor_peak']:.0f}")
        print(f"{row['label']} / CLIP: " + ", ".join(ratios))
    auto, unchunked = rows["sla_auto"], rows["sla_unchunked"]
    print(f"SLA chunked / unchunked: time {auto['seconds'] / unchunked['seconds']:.2f}, "
          f"RSS growth {auto['rss_growth'] / max(unchunked['rss_growth'], 1):.2f}"
          + ("" if auto["tensor_peak"] is None else
             f", tensor peak {auto['tensor_peak'] / unchunked['tensor_peak']:.2f}"))


if __name__ == "__main__":
    main()
