"""Seconds per optimizer step of the full MaMA loss vs the plain CLIP loss, same towers and batch.

    python bench/bench_train.py [--steps 10] [--batch-size 32] [--image-size 112] [--hidden-size 64] [--threads 2]

Both variants use `MamaConfig.tiny` at the demo's size and one batch of images, second views and
structured reports (8-11 sentences). "clip" runs before the late-loss step (CLIP only, no second view);
"mama" runs all four terms (CLIP, NT-Xent, symmetric CLIP with the second view, SLA). A step is
forward + backward + AdamW. Each variant runs in its own subprocess so its peak RSS is its own.
The goal for the tiny preset is a ratio <= 1.3x; the second view alone doubles the image-tower work,
so the script also reports the time with the second view but without SLA to show where time goes.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "clip": {"loss_terms": ("clip",), "extra_view": False},
    "mama_no_sla": {"loss_terms": ("clip", "multiview", "symmetric_clip"), "extra_view": True},
    "mama": {"loss_terms": ("clip", "multiview", "symmetric_clip", "local"), "extra_view": True},
}


def run_variant(name: str, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from modeling_mama import MamaConfig, MamaModel
    from modeling_mama.reports import ReportFields, build_report
    from modeling_mama.tokenization import batch_tokenize_reports, train_report_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    variant = VARIANTS[name]
    fields = [ReportFields(procedure="MG Screening Bilateral", age=int(rng.integers(40, 80)), race="White",
                           laterality=str(rng.choice(["L", "R"])), view=str(rng.choice(["CC", "MLO"])),
                           image_type="2D", density=int(rng.integers(1, 5)), birads=int(rng.integers(0, 7)))
              for _ in range(args.batch_size)]
    reports = [build_report(f, mask_prob=0.8, generator=rng) for f in fields]
    tokenizer = train_report_tokenizer([s for report in reports * 20 for s in report], vocab_size=1024)
    text = batch_tokenize_reports(reports, tokenizer)
    config = MamaConfig.tiny(vocab_size=len(tokenizer), image_size=args.image_size, hidden_size=args.hidden_size,
                             sentence_separator_token_id=tokenizer.sep_token_id)
    model = MamaModel(config).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    batch = dict(pixel_values=torch.randn(shape), input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                 sentence_positions=text["sentence_positions"], sentence_mask=text["sentence_mask"])
    if variant["extra_view"]:
        batch["extra_pixel_values"] = torch.randn(shape)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        out = model(**batch, return_loss=True, loss_terms=variant["loss_terms"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return {"variant": name, "terms": sorted(out.loss_terms), "median_s": statistics.median(times),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    results = {}
    for name in VARIANTS:
        command = [sys.executable, __file__, "--variant", name, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
                   "--hidden-size", str(args.hidden_size), "--threads", str(args.threads)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    base = results["clip"]["median_s"]
    print(f"tiny preset, batch {args.batch_size}, {args.image_size}px, hidden {args.hidden_size}, "
          f"{args.threads} threads, median of {args.steps} steps")
    print(f"{'variant':12s} {'terms':42s} {'s/step':>8s} {'ratio':>7s} {'peak RSS MiB':>13s}")
    for name, result in results.items():
        print(f"{name:12s} {','.join(result['terms']):42s} {result['median_s']:8.3f} "
              f"{result['median_s'] / base:6.2f}x {result['peak_rss_mib']:13.0f}")


if __name__ == "__main__":
    main()
