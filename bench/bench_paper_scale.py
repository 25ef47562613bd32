"""MaMA at the paper's size on the CPU: memory and time of one training step, and what batch 36 needs on a GPU.

    python bench/bench_paper_scale.py [--precision bf16|fp32] [--threads 2] [--store-frozen-bf16] [--text-layers 32]

`MamaConfig.paper()` with random weights: DINOv2-reg ViT-B/14 at 518x518 (1369 patches + 5 prefix
tokens) for the global view and the second view, a BioMedLM-sized GPT-2 text tower (2560 wide, 32
layers, frozen, LoRA r8 on c_attn) reading 144-token reports of 12 sentences, activation
checkpointing on both towers, every loss term. The script measures, in one process:

1. parameter memory (all parameters fp32, as bf16-mixed training keeps them) and the trainable share;
2. one forward + backward at batch 2 and at batch 3 (the multi-view head's BatchNorm needs two items
   in training mode), under bf16 autocast (the paper's precision; `--precision fp32` for a reference),
   each phase's peak RSS over the RSS before it (the kernel's peak counter is reset per phase);
   activation memory per item = (batch-3 peak) - (batch-2 peak);
3. one AdamW step on the trainable parameters (its state memory and time);
4. SLA over a batch of 36 (its [36 x 36] report-by-image scores are the one part of the step that grows
   faster than the batch), measured on its own at the paper's shapes.

From those measured numbers it prints the predicted memory of batch 36 per GPU in bf16 mixed precision,
term by term. The text tower alone is 10.4 GB in fp32: run it on a quiet machine with ~14 GB free.
`--store-frozen-bf16` keeps the frozen text tower's matmul weights in bf16 (about 6 GB in all): under
bf16 autocast those matmuls run in bf16 either way and the embeddings and norms stay fp32, so the
activations are the same; the prediction still counts every weight in fp32. `--text-layers 2` is a
quick smoke run of the same code with a shallow text tower, not the paper's size.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

GIB = 1024**3
PAPER_BATCH = 36
REPORT_TOKENS, SENTENCES, IMAGE_SIZE = 144, 12, 518


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


@contextlib.contextmanager
def phase(results: dict, name: str):
    """Record the phase's time and its peak RSS over the RSS at its start."""
    reset_peak_rss()
    start_rss, start = rss_bytes(), time.perf_counter()
    yield
    results[name] = {"seconds": time.perf_counter() - start, "peak_over_start": peak_rss_bytes() - start_rss}


def build_model(text_layers: int, store_frozen_bf16: bool):
    """`MamaConfig.paper()` with random weights, built on the meta device then materialised once."""
    import torch

    from modeling_mama import MamaConfig, MamaModel

    config = MamaConfig.paper(sentence_separator_token_id=3)
    config.text_config.n_layer = text_layers
    with torch.device("meta"):
        model = MamaModel(config)
    # The frozen text tower's matmul weights (attention and MLP), not its embeddings (wte, wpe).
    frozen_matmul = [p for name, p in model.text_model.named_parameters()
                     if not p.requires_grad and p.ndim == 2 and not name.startswith(("wte", "wpe"))]
    shrink = 2 if store_frozen_bf16 else 0
    needed = sum(p.numel() * 4 for p in model.parameters()) - shrink * sum(p.numel() for p in frozen_matmul) + 3 * GIB
    if available_bytes() < needed:
        raise SystemExit(f"bench_paper_scale needs about {needed / GIB:.1f} GiB free (weights + 3 GiB for the step), "
                         f"{available_bytes() / GIB:.1f} GiB are available: run it on a quieter machine.")
    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif parameter.ndim == 1:
                parameter.fill_(1.0)  # norm weights, layer scales
            else:
                parameter.normal_(0.0, 0.02)
        model.logit_scale.fill_(config.logit_scale_init_value)
        model.local_scale.fill_(config.local_scale_init_value)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
        if store_frozen_bf16:
            for parameter in frozen_matmul:
                parameter.data = parameter.data.to(torch.bfloat16)
    return model.train()


def make_batch(batch: int, vocab_size: int, separator: int):
    import torch

    generator = torch.Generator().manual_seed(batch)
    input_ids = torch.randint(10, vocab_size, (batch, REPORT_TOKENS), generator=generator)
    # 12 sentences: a separator closes every 12th token.
    input_ids[:, REPORT_TOKENS // SENTENCES - 1::REPORT_TOKENS // SENTENCES] = separator
    shape = (batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    return {"pixel_values": torch.randn(shape, generator=generator), "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "extra_pixel_values": torch.randn(shape, generator=generator)}


def step_memory(model, batch: dict, precision: str) -> None:
    import torch

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with autocast:
        outputs = model(**batch, return_loss=True)
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss), outputs.loss_terms


def sla_memory(results: dict, precision: str) -> None:
    """SLA alone at batch 36: 1369 patches, 12 sentences, width 512 (the paper's local projection)."""
    import torch
    import torch.nn.functional as F

    from modeling_mama.losses import local_alignment_loss

    patches = F.normalize(torch.randn(PAPER_BATCH, 1369, 512), dim=-1).requires_grad_()
    sentences = F.normalize(torch.randn(PAPER_BATCH, SENTENCES, 512), dim=-1).requires_grad_()
    mask = torch.ones(PAPER_BATCH, SENTENCES, dtype=torch.bool)
    with phase(results, "sla_36"):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = local_alignment_loss(patches, sentences, mask, torch.tensor(2.66))
        loss.backward()


def gib(value: float) -> str:
    return f"{value / GIB:7.2f} GiB"


def main(argv=None) -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # Large blocks straight from mmap and back to the kernel when freed: RSS then follows the live
        # tensors, so a phase's peak over its start is what it allocated (glibc otherwise keeps freed
        # memory and the next phase reuses it unseen).
        threshold = str(128 * 1024)
        environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": threshold, "MALLOC_TRIM_THRESHOLD_": threshold}
        os.execve(sys.executable, [sys.executable, *sys.argv], environment)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text-layers", type=int, default=32, help="32 is BioMedLM; fewer only for a smoke run.")
    parser.add_argument("--store-frozen-bf16", action="store_true",
                        help="Frozen text-tower matmul weights in bf16 (halves this bench's memory; bf16 only).")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: dict = {}
    load = os.getloadavg()
    if args.store_frozen_bf16 and args.precision != "bf16":
        parser.error("--store-frozen-bf16 measures the bf16 autocast step only.")
    with phase(results, "build"):
        model = build_model(args.text_layers, args.store_frozen_bf16)
    parameters = list(model.parameters())
    parameter_bytes = sum(p.numel() * 4 for p in parameters)  # bf16-mixed keeps fp32 weights
    trainable = [p for p in parameters if p.requires_grad]
    trainable_count = sum(p.numel() for p in trainable)
    text_bytes = sum(p.numel() * 4 for p in model.text_model.parameters())
    config = model.config

    with phase(results, "batch_2"):
        step_memory(model, make_batch(2, config.text_config.vocab_size, 3), args.precision)
    gradient_bytes = sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)
    model.zero_grad(set_to_none=True)
    with phase(results, "batch_3"):
        step_memory(model, make_batch(3, config.text_config.vocab_size, 3), args.precision)
    optimizer = torch.optim.AdamW(trainable, lr=4e-5, weight_decay=0.1)
    with phase(results, "adamw"):
        optimizer.step()
    optimizer_bytes = sum(value.numel() * value.element_size() for state in optimizer.state.values()
                          for value in state.values() if torch.is_tensor(value))
    optimizer.zero_grad(set_to_none=True)
    sla_memory(results, args.precision)

    batch_2, batch_3 = results["batch_2"]["peak_over_start"], results["batch_3"]["peak_over_start"]
    per_item = batch_3 - batch_2
    # What batch 2 needs beyond two items' activations and the gradients: per-step buffers that do not grow
    # with the batch (recomputed layer, autocast weight casts, loss temporaries).
    fixed = batch_2 - 2 * per_item - gradient_bytes
    # SLA's peak at batch 36 (similarity blocks, scores, input gradients); the per-item figure already
    # holds SLA at batch 2-3, so adding it whole counts a little twice (on the safe side).
    sla_36 = results["sla_36"]["peak_over_start"]

    stored = ", frozen matmul weights stored bf16" if args.store_frozen_bf16 else ""
    print(f"MaMA paper preset, text tower {args.text_layers} layers, {args.precision}{stored} "
          f"(load {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}), {args.threads} threads")
    print(f"parameters         {sum(p.numel() for p in parameters) / 1e9:6.3f} B = {gib(parameter_bytes)} "
          f"(text tower {gib(text_bytes)}); trainable {trainable_count / 1e6:.1f} M")
    print(f"build              {results['build']['seconds']:7.1f} s")
    for name, batch in (("batch_2", 2), ("batch_3", 3)):
        print(f"fwd+bwd batch {batch}    {results[name]['seconds']:7.1f} s, "
              f"peak over start {gib(results[name]['peak_over_start'])}")
    print(f"AdamW step         {results['adamw']['seconds']:7.1f} s, state {gib(optimizer_bytes)}")
    print(f"gradients          {gib(gradient_bytes)}")
    print(f"activations/item   {gib(per_item)}   (batch-3 peak - batch-2 peak)")
    print(f"fixed per step     {gib(fixed)}   (batch-2 peak - two items - gradients)")
    print(f"SLA at batch 36    {gib(sla_36)}   peak, {results['sla_36']['seconds']:.1f} s")

    terms = [
        ("weights (fp32 master, all)", parameter_bytes),
        ("gradients (trainable, fp32)", gradient_bytes),
        ("AdamW state (2 x trainable, fp32)", optimizer_bytes),
        (f"activations {PAPER_BATCH} x {per_item / GIB:.3f} GiB", PAPER_BATCH * per_item),
        ("fixed per-step buffers", max(fixed, 0)),
        ("SLA at batch 36 (peak)", sla_36),
    ]
    total = sum(value for _, value in terms)
    print(f"\npredicted GPU memory, batch {PAPER_BATCH} per GPU, bf16 autocast with fp32 master weights:")
    for name, value in terms:
        print(f"  {name:40s} {gib(value)}")
    print(f"  {'total (before CUDA context and allocator slack)':40s} {gib(total)}")
    verdict = "fits" if total < 0.9 * 80 * GIB else "does not fit"
    print(f"  -> {verdict} in an 80 GB GPU (80 GiB) with 10% left for the CUDA context and fragmentation")


if __name__ == "__main__":
    main()
