"""One rank of the 2-process loss test (tests/test_losses.py launches two of these).

Loads the global inputs saved by the test, takes this rank's rows for each split, computes every
loss with `gather=True`, backpropagates each loss on its own and saves values and gradients.
`losses.py` is loaded by file path so that the workers do not import the package (and transformers).

Usage: python _dist_worker_losses.py RANK WORLD_SIZE PORT INPUTS_FILE OUTPUT_DIR
"""

import datetime
import importlib.util
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

LOSSES_FILE = Path(__file__).resolve().parents[1] / "modeling_mama" / "losses.py"


def load_losses():
    spec = importlib.util.spec_from_file_location("mama_losses", LOSSES_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def leaf(tensor):
    return tensor.detach().clone().requires_grad_(True)


def run_split(losses, inputs, rows, rank, world_size):
    """Every loss on this rank's rows; each backpropagated separately."""
    start = sum(rows[:rank])
    local = slice(start, start + rows[rank])
    sentence_mask = inputs["sentence_mask"][local]
    patch_mask = inputs["patch_mask"][local]
    # Trim padding columns no local row uses: ranks then hold different S and P, as after a collator.
    n_sentences = int(sentence_mask.sum(1).max())
    n_patches = int(patch_mask.sum(1).max())
    result = {"n_sentences": n_sentences, "n_patches": n_patches}

    image, text, logit_scale = leaf(inputs["image"][local]), leaf(inputs["text"][local]), leaf(inputs["logit_scale"])
    loss = losses.contrastive_loss(image, text, logit_scale, gather=True)
    loss.backward()
    result["clip"] = {"loss": loss.detach(), "image": image.grad, "text": text.grad, "logit_scale": logit_scale.grad}

    z_a, z_b = leaf(inputs["z_a"][local]), leaf(inputs["z_b"][local])
    loss = losses.nt_xent_loss(z_a, z_b, 0.5)
    loss.backward()
    result["nt_xent"] = {"loss": loss.detach(), "z_a": z_a.grad, "z_b": z_b.grad}

    for symmetric in (True, False):
        patches = leaf(inputs["patches"][local, :n_patches])
        sentences = leaf(inputs["sentences"][local, :n_sentences])
        local_scale = leaf(inputs["local_scale"])
        loss = losses.local_alignment_loss(
            patches, sentences, sentence_mask[:, :n_sentences], local_scale, symmetric,
            patch_mask=patch_mask[:, :n_patches], gather=True, chunk_size=2)
        loss.backward()
        result[f"sla_symmetric_{symmetric}"] = {"loss": loss.detach(), "patches": patches.grad,
                                                "sentences": sentences.grad, "local_scale": local_scale.grad}

    weights = inputs["gather_weights"]
    gathered_input = leaf(inputs["image"][local])
    gathered = losses.gather_with_grad(gathered_input)
    (gathered * weights[: gathered.shape[0]]).sum().backward()
    result["gather"] = {"gathered": gathered.detach(), "grad": gathered_input.grad}
    return result


def empty_report_error(losses, inputs, rank):
    """Rank 1 passes a report without sentences: every rank must raise (not hang) and say so."""
    sentence_mask = inputs["sentence_mask"][3 * rank: 3 * rank + 3].clone()
    if rank == 1:
        sentence_mask[0] = False
    try:
        losses.local_alignment_loss(inputs["patches"][3 * rank: 3 * rank + 3],
                                    inputs["sentences"][3 * rank: 3 * rank + 3], sentence_mask,
                                    inputs["local_scale"], gather=True)
    except ValueError as error:
        return str(error)
    return None


def main():
    rank, world_size, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    inputs_file, output_dir = Path(sys.argv[4]), Path(sys.argv[5])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        losses = load_losses()
        inputs = torch.load(inputs_file)
        results = {"rank_and_world_size": losses.get_rank_and_world_size()}
        for name, rows in inputs["splits"].items():
            results[name] = run_split(losses, inputs, rows, rank, world_size)
        results["empty_report_error"] = empty_report_error(losses, inputs, rank)
        partial = output_dir / f"rank{rank}.pt.tmp"
        torch.save(results, partial)
        os.replace(partial, output_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
