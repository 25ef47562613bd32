"""Tests of modeling_mama.losses against explicit loop implementations and hand-worked values.

Everything runs in float64 so vectorised and loop implementations agree to ~1e-12. The
distributed test launches two real gloo processes (tests/_dist_worker_losses.py).
"""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from modeling_mama import losses
from modeling_mama.losses import (
    contrastive_loss,
    gather_with_grad,
    get_rank_and_world_size,
    local_alignment_loss,
    nt_xent_loss,
)

DTYPE = torch.float64
ATOL = 1e-10


# ---------------------------------------------------------------------------- loop references
def loop_cross_entropy(rows):
    """Mean over rows i of -log softmax(rows[i])[i]; rows is a list of lists of 0-dim tensors."""
    total = 0.0
    for i, row in enumerate(rows):
        total = total + torch.logsumexp(torch.stack(row), dim=0) - row[i]
    return total / len(rows)


def transpose(rows):
    return [[rows[j][i] for j in range(len(rows))] for i in range(len(rows[0]))]


def loop_contrastive(image, text, logit_scale):
    scale = logit_scale.exp()
    batch = image.shape[0]
    logits = [[scale * torch.dot(image[i], text[j]) for j in range(batch)] for i in range(batch)]
    return loop_cross_entropy(logits) + loop_cross_entropy(transpose(logits))


def loop_nt_xent(z_a, z_b, temperature):
    batch = z_a.shape[0]
    z_a = [z_a[i] / z_a[i].norm() for i in range(batch)]
    z_b = [z_b[i] / z_b[i].norm() for i in range(batch)]
    total = 0.0
    for anchors, others in ((z_a, z_b), (z_b, z_a)):
        for i in range(batch):
            logits = [torch.dot(anchors[i], others[j]) / temperature for j in range(batch)]
            logits += [torch.dot(anchors[i], anchors[k]) / temperature for k in range(batch) if k != i]
            total = total + torch.logsumexp(torch.stack(logits), dim=0) - logits[i]
    return total / (2 * batch)


def loop_local_alignment(patches, sentences, sentence_mask, logit_scale, symmetric=True, patch_mask=None):
    batch, n_patches, _ = patches.shape
    n_sentences = sentences.shape[1]
    scale = logit_scale.exp()
    t2i = [[None] * batch for _ in range(batch)]
    i2t = [[None] * batch for _ in range(batch)]
    for i in range(batch):
        real_sentences = [k for k in range(n_sentences) if sentence_mask[i, k]]
        for j in range(batch):
            real_patches = [p for p in range(n_patches) if patch_mask is None or patch_mask[j, p]]
            sim = {(p, k): torch.dot(patches[j, p], sentences[i, k]) for p in real_patches for k in real_sentences}
            best_patch = [torch.stack([sim[p, k] for p in real_patches]).max() for k in real_sentences]
            best_sentence = [torch.stack([sim[p, k] for k in real_sentences]).max() for p in real_patches]
            t2i[i][j] = scale * sum(best_patch) / len(real_sentences)
            i2t[i][j] = scale * sum(best_sentence) / len(real_patches)
    loss = loop_cross_entropy(t2i) + loop_cross_entropy(transpose(t2i))
    if symmetric:
        loss = loss + loop_cross_entropy(i2t) + loop_cross_entropy(transpose(i2t))
    return loss


# ---------------------------------------------------------------------------------- helpers
def unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=DTYPE), dim=-1)


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def value_and_grads(function, *inputs):
    inputs = leaves(*inputs)
    loss = function(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    return loss.detach(), grads


def assert_same_value_and_grads(first, second):
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    torch.testing.assert_close(loss_a, loss_b, atol=ATOL, rtol=0)
    for grad_a, grad_b in zip(grads_a, grads_b):
        torch.testing.assert_close(grad_a, grad_b, atol=ATOL, rtol=0)


def log_scale(scale):
    return torch.tensor(math.log(scale), dtype=DTYPE)


def prefix_mask(lengths, width):
    """Bool [len(lengths), width]: the first lengths[b] entries of row b are True (real)."""
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def sla_inputs(batch=4, n_patches=5, n_sentences=3, dim=6, lengths=(3, 1, 2, 3)):
    """Random normalised SLA inputs; padded sentence slots hold large garbage (not unit) vectors."""
    patches = unit(batch, n_patches, dim)
    sentence_mask = prefix_mask(lengths, n_sentences)
    sentences = torch.where(sentence_mask[..., None], unit(batch, n_sentences, dim),
                            10 * torch.randn(batch, n_sentences, dim, dtype=DTYPE))
    return patches, sentences, sentence_mask, log_scale(5.0)


# ------------------------------------------------------------------------------ contrastive
def test_contrastive_matches_loop_value_and_gradients():
    image, text = unit(5, 7), unit(5, 7)
    scale = log_scale(1 / 0.07)
    assert_same_value_and_grads(value_and_grads(contrastive_loss, image, text, scale),
                                value_and_grads(loop_contrastive, image, text, scale))


def test_contrastive_identical_embeddings_is_twice_log_batch():
    same = unit(1, 8).expand(6, 8)
    loss = contrastive_loss(same, same, log_scale(1 / 0.07))
    # every logit equals s: each direction is log(B) exactly
    assert loss.item() == pytest.approx(2 * math.log(6), abs=1e-12)


def test_contrastive_perfect_alignment():
    pairs = torch.eye(4, dtype=DTYPE)
    # diagonal logit s, off-diagonal 0: each row's CE is log(1 + (B-1) e^-s)
    loss = contrastive_loss(pairs, pairs, log_scale(5.0))
    assert loss.item() == pytest.approx(2 * math.log1p(3 * math.exp(-5.0)), abs=1e-12)
    assert contrastive_loss(pairs, pairs, log_scale(100.0)).item() < 1e-12


def test_contrastive_batch_permutation_leaves_loss_unchanged():
    image, text = unit(6, 5), unit(6, 5)
    order = torch.randperm(6)
    scale = log_scale(10.0)
    torch.testing.assert_close(contrastive_loss(image[order], text[order], scale),
                               contrastive_loss(image, text, scale), atol=ATOL, rtol=0)


def test_contrastive_rejects_mismatched_shapes_and_bad_scale():
    with pytest.raises(ValueError, match=r"image_embeds and text_embeds must have the same shape \[B, D\]; "
                                         r"got \(3, 4\) and \(3, 5\)"):
        contrastive_loss(unit(3, 4), unit(3, 5), log_scale(2.0))
    with pytest.raises(ValueError, match=r"logit_scale must hold one value"):
        contrastive_loss(unit(3, 4), unit(3, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"text_embeds must be a tensor of shape \[B, D\]; got \(3, 4, 1\)"):
        contrastive_loss(unit(3, 4), unit(3, 4, 1), log_scale(2.0))


# -------------------------------------------------------------------------------- NT-Xent
@pytest.mark.parametrize("temperature", [0.5, 0.2])
def test_nt_xent_matches_loop_value_and_gradients(temperature):
    # not normalised on purpose: the loss normalises inside
    z_a, z_b = 3 * torch.randn(5, 6, dtype=DTYPE), torch.randn(5, 6, dtype=DTYPE)
    assert_same_value_and_grads(value_and_grads(lambda a, b: nt_xent_loss(a, b, temperature), z_a, z_b),
                                value_and_grads(lambda a, b: loop_nt_xent(a, b, temperature), z_a, z_b))


def test_nt_xent_is_symmetric_and_scale_free():
    z_a, z_b = torch.randn(6, 4, dtype=DTYPE), torch.randn(6, 4, dtype=DTYPE)
    loss = nt_xent_loss(z_a, z_b)
    torch.testing.assert_close(nt_xent_loss(z_b, z_a), loss, atol=ATOL, rtol=0)
    row_scales = torch.rand(6, 1, dtype=DTYPE) + 0.5
    torch.testing.assert_close(nt_xent_loss(z_a * row_scales, z_b), loss, atol=ATOL, rtol=0)
    order = torch.randperm(6)
    torch.testing.assert_close(nt_xent_loss(z_a[order], z_b[order]), loss, atol=ATOL, rtol=0)


def test_nt_xent_identical_views_is_log_of_2b_minus_1():
    same = torch.ones(4, 3, dtype=DTYPE)
    # 2B - 1 equal logits per anchor
    assert nt_xent_loss(same, same).item() == pytest.approx(math.log(7), abs=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_orthonormal_views_and_temperature(temperature):
    views = torch.eye(4, dtype=DTYPE)
    # positive logit 1/T, the other 2(B-1) logits 0
    expected = math.log1p(2 * 3 * math.exp(-1 / temperature))
    assert nt_xent_loss(views, views, temperature).item() == pytest.approx(expected, abs=1e-12)


def test_nt_xent_lower_temperature_sharpens():
    views = torch.eye(4, dtype=DTYPE)
    assert nt_xent_loss(views, views, 0.1) < nt_xent_loss(views, views, 0.5) < nt_xent_loss(views, views, 2.0)
    with pytest.raises(ValueError, match="temperature must be > 0; got 0"):
        nt_xent_loss(views, views, 0)


# ------------------------------------------------------------------------ local alignment (SLA)
@pytest.mark.parametrize("symmetric", [True, False])
def test_local_alignment_matches_loop_with_padded_sentences(symmetric):
    patches, sentences, sentence_mask, scale = sla_inputs()
    inputs = (patches, sentences, scale)
    assert_same_value_and_grads(
        value_and_grads(lambda p, s, ls: local_alignment_loss(p, s, sentence_mask, ls, symmetric), *inputs),
        value_and_grads(lambda p, s, ls: loop_local_alignment(p, s, sentence_mask, ls, symmetric), *inputs),
    )


def test_local_alignment_matches_loop_with_patch_mask():
    patches, sentences, sentence_mask, scale = sla_inputs()
    patch_mask = prefix_mask([5, 2, 4, 1], 5)
    assert_same_value_and_grads(
        value_and_grads(lambda p, s: local_alignment_loss(p, s, sentence_mask, scale, patch_mask=patch_mask),
                        patches, sentences),
        value_and_grads(lambda p, s: loop_local_alignment(p, s, sentence_mask, scale, patch_mask=patch_mask),
                        patches, sentences),
    )


def hand_cross_entropy(matrix):
    return sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(matrix)) / len(matrix)


def test_local_alignment_hand_worked_example():
    e0, e1 = torch.tensor([1.0, 0.0], dtype=DTYPE), torch.tensor([0.0, 1.0], dtype=DTYPE)
    patches = torch.stack([torch.stack([e0, e1]), torch.stack([e1, e1])])  # image 0: e0, e1; image 1: e1, e1
    # report 0: "e0" plus a padded garbage sentence that would be image 1's best match if it counted
    sentences = torch.stack([torch.stack([e0, 7 * e1]), torch.stack([e1, e0])])
    sentence_mask = torch.tensor([[True, False], [True, True]])
    # t2i[i][j]: mean over sentences of the best patch; i2t[i][j]: mean over patches of the best sentence
    t2i = [[1.0, 0.0], [1.0, 0.5]]
    i2t = [[0.5, 0.0], [1.0, 1.0]]
    expected_t2i = hand_cross_entropy(t2i) + hand_cross_entropy(transpose(t2i))
    expected_i2t = hand_cross_entropy(i2t) + hand_cross_entropy(transpose(i2t))
    no_scale = torch.tensor(0.0, dtype=DTYPE)
    assert local_alignment_loss(patches, sentences, sentence_mask, no_scale).item() == pytest.approx(
        expected_t2i + expected_i2t, abs=1e-12)
    assert local_alignment_loss(patches, sentences, sentence_mask, no_scale, symmetric=False).item() == pytest.approx(
        expected_t2i, abs=1e-12)


def test_local_alignment_identical_embeddings_is_log_batch_per_term():
    patches = unit(1, 1, 4).expand(3, 5, 4)
    sentences = patches[:, :2]
    mask = torch.ones(3, 2, dtype=torch.bool)
    scale = log_scale(1 / 0.07)
    assert local_alignment_loss(patches, sentences, mask, scale).item() == pytest.approx(4 * math.log(3), abs=1e-12)
    assert local_alignment_loss(patches, sentences, mask, scale, symmetric=False).item() == pytest.approx(
        2 * math.log(3), abs=1e-12)


def test_local_alignment_perfect_alignment():
    basis = torch.eye(4, dtype=DTYPE)
    patches = basis[:, None, :].expand(4, 6, 4)  # every patch of image j is e_j
    sentences = basis[:, None, :].expand(4, 3, 4)  # every sentence of report i is e_i
    mask = torch.ones(4, 3, dtype=torch.bool)
    loss = local_alignment_loss(patches, sentences, mask, log_scale(5.0))
    assert loss.item() == pytest.approx(4 * math.log1p(3 * math.exp(-5.0)), abs=1e-12)
    assert local_alignment_loss(patches, sentences, mask, log_scale(100.0)).item() < 1e-12


def test_local_alignment_permutations_leave_loss_unchanged():
    patches, sentences, sentence_mask, scale = sla_inputs(lengths=(3, 3, 3, 3))
    loss = local_alignment_loss(patches, sentences, sentence_mask, scale)
    order = torch.randperm(4)
    torch.testing.assert_close(local_alignment_loss(patches[order], sentences[order], sentence_mask[order], scale),
                               loss, atol=ATOL, rtol=0)
    # the order of patches within an image and of sentences within a report does not matter either
    torch.testing.assert_close(
        local_alignment_loss(patches[:, torch.randperm(5)], sentences[:, torch.randperm(3)], sentence_mask, scale),
        loss, atol=ATOL, rtol=0)


def test_local_alignment_padded_sentences_and_patches_never_count():
    patches, sentences, sentence_mask, scale = sla_inputs(lengths=(3, 1, 2, 3))
    loss = local_alignment_loss(patches, sentences, sentence_mask, scale)
    # more padded sentence slots full of garbage
    garbage = 50 * torch.randn(4, 2, 6, dtype=DTYPE)
    padded_sentences = torch.cat([sentences, garbage], dim=1)
    padded_mask = torch.cat([sentence_mask, torch.zeros(4, 2, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(local_alignment_loss(patches, padded_sentences, padded_mask, scale), loss,
                               atol=ATOL, rtol=0)
    # garbage patches appended, masked out through patch_mask
    padded_patches = torch.cat([patches, 50 * torch.randn(4, 3, 6, dtype=DTYPE)], dim=1)
    patch_mask = torch.cat([torch.ones(4, 5, dtype=torch.bool), torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(local_alignment_loss(padded_patches, sentences, sentence_mask, scale,
                                                    patch_mask=patch_mask), loss, atol=ATOL, rtol=0)
    # and the garbage receives no gradient
    padded_patches.requires_grad_(True)
    padded_sentences.requires_grad_(True)
    local_alignment_loss(padded_patches, padded_sentences, padded_mask, scale, patch_mask=patch_mask).backward()
    assert padded_patches.grad[:, 5:].abs().max() == 0
    assert padded_sentences.grad[~padded_mask].abs().max() == 0


def test_local_alignment_one_sentence_reports():
    patches, sentences, sentence_mask, scale = sla_inputs(n_sentences=1, lengths=(1, 1, 1, 1))
    assert sentences.shape == (4, 1, 6)
    assert_same_value_and_grads(
        value_and_grads(lambda p, s: local_alignment_loss(p, s, sentence_mask, scale), patches, sentences),
        value_and_grads(lambda p, s: loop_local_alignment(p, s, sentence_mask, scale), patches, sentences),
    )


def test_local_alignment_rejects_reports_without_sentences_and_bad_shapes():
    patches, sentences, sentence_mask, scale = sla_inputs()
    sentence_mask[2] = False
    with pytest.raises(ValueError, match=r"every report needs at least one real sentence .* reports with no True "
                                         r"in sentence_mask: \[2\]"):
        local_alignment_loss(patches, sentences, sentence_mask, scale)
    sentence_mask[2, 0] = True
    patch_mask = torch.ones(4, 5, dtype=torch.bool)
    patch_mask[1] = False
    with pytest.raises(ValueError, match=r"images with no True in patch_mask: \[1\]"):
        local_alignment_loss(patches, sentences, sentence_mask, scale, patch_mask=patch_mask)
    with pytest.raises(ValueError, match=r"sentence_mask must have shape \[B, S\] = \(4, 3\); got \(4, 2\)"):
        local_alignment_loss(patches, sentences, sentence_mask[:, :2], scale)
    with pytest.raises(ValueError, match=r"must share B and D; got \(4, 5, 6\) and \(3, 3, 6\)"):
        local_alignment_loss(patches, sentences[:3], sentence_mask[:3], scale)
    with pytest.raises(ValueError, match=r"chunk_size must be a positive number of images or None; got 0"):
        local_alignment_loss(patches, sentences, sentence_mask, scale, chunk_size=0)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7])
def test_local_alignment_chunking_gives_same_value_and_gradients(chunk_size):
    patches, sentences, sentence_mask, scale = sla_inputs(batch=7, lengths=(3, 1, 2, 3, 2, 1, 3))
    patch_mask = prefix_mask([5, 4, 5, 3, 5, 5, 2], 5)

    def loss(chunk):
        return lambda p, s, ls: local_alignment_loss(p, s, sentence_mask, ls, patch_mask=patch_mask, chunk_size=chunk)

    assert_same_value_and_grads(value_and_grads(loss(chunk_size), patches, sentences, scale),
                                value_and_grads(loss(None), patches, sentences, scale))


def test_local_alignment_automatic_chunks_follow_the_element_budget(monkeypatch):
    patches, sentences, sentence_mask, scale = sla_inputs(batch=6, lengths=(3, 1, 2, 3, 2, 1))
    unchunked = value_and_grads(lambda p, s: local_alignment_loss(p, s, sentence_mask, scale, chunk_size=6),
                                patches, sentences)
    seen_blocks = []
    original_max = torch.Tensor.max

    def recording_max(tensor, *args, **kwargs):
        if tensor.ndim == 4:
            seen_blocks.append(tensor.shape[0])
        return original_max(tensor, *args, **kwargs)

    # one report-by-image block is 6 reports x 5 patches x 3 sentences = 90 elements per image
    monkeypatch.setattr(losses, "SLA_CHUNK_ELEMENTS", 2 * 90)
    monkeypatch.setattr(torch.Tensor, "max", recording_max)
    chunked = value_and_grads(lambda p, s: local_alignment_loss(p, s, sentence_mask, scale), patches, sentences)
    assert seen_blocks == [2, 2, 2, 2, 2, 2]  # 3 blocks of 2 images, two max reductions each
    assert_same_value_and_grads(chunked, unchunked)


def test_every_loss_gives_finite_nonzero_gradients():
    patches, sentences, sentence_mask, scale = sla_inputs()
    image, text, z_a, z_b = unit(4, 6), unit(4, 6), torch.randn(4, 6, dtype=DTYPE), torch.randn(4, 6, dtype=DTYPE)
    cases = [
        (contrastive_loss, (image, text, log_scale(1 / 0.07))),
        (nt_xent_loss, (z_a, z_b)),
        (lambda p, s, ls: local_alignment_loss(p, s, sentence_mask, ls), (patches, sentences, scale)),
    ]
    for function, inputs in cases:
        _, grads = value_and_grads(function, *inputs)
        for grad in grads:
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gather_without_process_group_is_the_identity():
    assert get_rank_and_world_size() == (0, 1)
    tensor = torch.randn(3, 2)
    assert gather_with_grad(tensor) is tensor
    image, text = unit(4, 5), unit(4, 5)
    assert torch.equal(contrastive_loss(image, text, log_scale(3.0), gather=True),
                       contrastive_loss(image, text, log_scale(3.0)))
    assert torch.equal(nt_xent_loss(image, text, gather=True), nt_xent_loss(image, text, gather=False))


# ------------------------------------------------------------------------------ bf16 autocast
def test_losses_under_bf16_autocast_match_fp32():
    """The paper trains under bf16 autocast (fp32 master weights), so the losses' similarity GEMMs run
    in bf16 (8 significant bits: relative rounding 2**-9). Stated tolerances, over 5 seeded batches:
    values within 1% of fp32 (worst seen 0.2%); CLIP / NT-Xent input gradients within 2% (worst seen
    0.4%). SLA's max over patches / sentences can pick another winner when two similarities tie
    within bf16's resolution, so its gradient is compared by direction: cosine > 0.97 (worst seen 0.988)."""
    rounded = []
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        image, text = (F.normalize(torch.randn(8, 32, generator=generator), dim=-1) for _ in range(2))
        patches = F.normalize(torch.randn(8, 16, 32, generator=generator), dim=-1)
        sentences = F.normalize(torch.randn(8, 6, 32, generator=generator), dim=-1)
        sentence_mask = torch.ones(8, 6, dtype=torch.bool)
        sentence_mask[::2, 4:] = False
        scale = torch.tensor(math.log(1 / 0.07))
        cases = {
            "clip": (lambda x: contrastive_loss(x, text, scale), image),
            "nt_xent": (lambda x: nt_xent_loss(x, text, 0.5), image),
            "sla": (lambda x: local_alignment_loss(x, sentences, sentence_mask, scale), patches),
        }
        for name, (function, leaf) in cases.items():
            reference = leaf.clone().requires_grad_()
            expected = function(reference)
            expected_grad, = torch.autograd.grad(expected, reference)
            low = leaf.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                value = function(low)
            grad, = torch.autograd.grad(value, low)
            assert torch.isfinite(value) and torch.isfinite(grad).all(), name
            assert value.item() == pytest.approx(expected.item(), rel=1e-2), (name, seed)
            rounded.append(value.item() != expected.item())
            if name == "sla":
                assert F.cosine_similarity(grad.flatten(), expected_grad.flatten(), dim=0) > 0.97, seed
            else:
                assert (grad - expected_grad).norm() <= 2e-2 * expected_grad.norm(), (name, seed)
    assert all(rounded)  # bf16 was really on


# ----------------------------------------------------------------------------- distributed
def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """2 gloo ranks with gather give the single-process loss on every rank; convention for gradients:
    each rank's input gradients are world_size x the single-process ones (DDP's average divides by
    world_size); replicated scales' gradients averaged over ranks equal the single-process gradient."""
    world_size, batch, n_patches, n_sentences, dim = 2, 6, 5, 4, 8
    sentence_mask = prefix_mask([4, 2, 3, 3, 1, 2], n_sentences)  # rows 3-5 use at most 3 sentence slots
    patch_mask = prefix_mask([5, 3, 5, 4, 2, 4], n_patches)  # rows 3-5 use at most 4 patch slots
    inputs = {
        "image": unit(batch, dim), "text": unit(batch, dim), "logit_scale": log_scale(1 / 0.07),
        "z_a": torch.randn(batch, dim, dtype=DTYPE), "z_b": torch.randn(batch, dim, dtype=DTYPE),
        "patches": unit(batch, n_patches, dim), "sentences": unit(batch, n_sentences, dim),
        "sentence_mask": sentence_mask, "patch_mask": patch_mask, "local_scale": log_scale(4.0),
        "gather_weights": torch.randn(batch, dim, dtype=DTYPE),
        "splits": {"even": [3, 3], "uneven": [4, 2]},
    }
    torch.save(inputs, tmp_path / "inputs.pt")
    port = free_port()
    worker = Path(__file__).with_name("_dist_worker_losses.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, str(worker), str(rank), str(world_size), str(port),
                                   str(tmp_path / "inputs.pt"), str(tmp_path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
                 for rank in range(world_size)]
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=180)[0].decode(errors="replace"))
    except subprocess.TimeoutExpired:
        pytest.fail("the 2-process loss workers did not finish within 180 s (hang in a collective?)")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, log in zip(processes, logs):
        assert process.returncode == 0, log
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world_size)]
    assert [r["rank_and_world_size"] for r in ranks] == [(0, 2), (1, 2)]
    for rank, result in enumerate(ranks):
        assert "every report needs at least one real sentence and every image at least one real patch " \
               "on rank(s) [1]" in result["empty_report_error"]
        assert f"reports with no True in sentence_mask: {[0] if rank == 1 else []}" in result["empty_report_error"]

    clip = value_and_grads(contrastive_loss, inputs["image"], inputs["text"], inputs["logit_scale"])
    nt_xent = value_and_grads(lambda a, b: nt_xent_loss(a, b, 0.5), inputs["z_a"], inputs["z_b"])
    sla = {symmetric: value_and_grads(
        lambda p, s, ls: local_alignment_loss(p, s, sentence_mask, ls, symmetric, patch_mask=patch_mask),
        inputs["patches"], inputs["sentences"], inputs["local_scale"]) for symmetric in (True, False)}

    def check(results, name, single, input_names, replicated_names=()):
        single_loss, single_grads = single
        for result in results:
            torch.testing.assert_close(result[name]["loss"], single_loss, atol=ATOL, rtol=0)
        for input_name, single_grad in zip(input_names + replicated_names, single_grads):
            grads = [result[name][input_name] for result in results]
            if input_name in replicated_names:
                torch.testing.assert_close(sum(grads) / world_size, single_grad, atol=ATOL, rtol=0)
                continue
            if single_grad.ndim == 3:
                # a rank's trimmed padding columns count as zero gradient, as in the single process
                grads = [F.pad(grad, (0, 0, 0, single_grad.shape[1] - grad.shape[1])) for grad in grads]
            torch.testing.assert_close(torch.cat(grads) / world_size, single_grad, atol=ATOL, rtol=0)

    for split, rows in inputs["splits"].items():
        results = [r[split] for r in ranks]
        assert [r["n_sentences"] for r in results] == ([4, 3] if split == "even" else [4, 2])
        assert [r["n_patches"] for r in results] == ([5, 4] if split == "even" else [5, 4])
        check(results, "clip", clip, ("image", "text"), ("logit_scale",))
        check(results, "nt_xent", nt_xent, ("z_a", "z_b"))
        for symmetric in (True, False):
            check(results, f"sla_symmetric_{symmetric}", sla[symmetric], ("patches", "sentences"), ("local_scale",))
        # gather_with_grad: the concatenation in rank order; each rank's rows get the sum of both ranks' grads
        starts = [0, rows[0]]
        for rank, result in enumerate(results):
            torch.testing.assert_close(result["gather"]["gathered"], inputs["image"], atol=0, rtol=0)
            local = slice(starts[rank], starts[rank] + rows[rank])
            torch.testing.assert_close(result["gather"]["grad"], world_size * inputs["gather_weights"][local],
                                       atol=ATOL, rtol=0)
