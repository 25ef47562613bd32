"""MaMA's loss functions: image-report CLIP, multi-view NT-Xent and symmetric local alignment (SLA).

Every function takes embeddings and returns a 0-dim tensor; the model weights and sums them. Each
CLIP-style term is the **sum** of its two directional cross-entropies (METHOD.md section 2).

Distribution is an explicit argument, as in open_clip: with `gather=True` and an initialised
`torch.distributed` process group of more than one rank, the embeddings of every rank are gathered
with gradient and the loss is taken over the global batch. The convention, shared by all three
losses:

* **Value.** Every rank returns the loss of the global batch (the concatenation of the ranks'
  batches in rank order), exactly what one process computing on that batch would return.
* **Gradient.** Each rank only computes the rows it owns (its anchors / reports / images against the
  global batch), so the work is split, and the backward behaves as if every rank had computed the
  global loss itself: the gather's backward sums the gradients of all ranks, so each rank's inputs
  receive `world_size x` their single-process gradient. DDP *averages* gradients over ranks, which
  divides that factor out: parameter gradients equal the single-process gradients exactly. (Without
  DDP, divide by the world size yourself.)
* Per-rank batch sizes may differ (e.g. an uneven last batch) and so may the padded sentence and
  patch counts of SLA; the ranks exchange sizes before gathering.

Without `torch.distributed` (or with one rank) `gather=True` changes nothing.

>>> import math, torch
>>> same = torch.ones(4, 8) / math.sqrt(8)       # four identical image / report embeddings
>>> loss = contrastive_loss(same, same, torch.tensor(math.log(1 / 0.07)))
>>> math.isclose(loss.item(), 2 * math.log(4), rel_tol=1e-6)   # chance level, both directions
True
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

# SLA computes one [images_in_chunk, P, reports, S] similarity block at a time. 2**22 elements is
# 16 MiB in fp32: about 7 images per block at the paper's shapes (36 reports x 1369 patches x 12).
SLA_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------- distribution
def get_rank_and_world_size(group=None) -> tuple[int, int]:
    """(rank, world size) within `group`; (0, 1) when `torch.distributed` is not initialised.

    >>> get_rank_and_world_size()
    (0, 1)
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group=group), dist.get_world_size(group=group)


def _all_gather_shapes(shape: list[int], group, device) -> list[list[int]]:
    """Every rank's `shape` (a list of ints of the same length on every rank), in rank order."""
    local = torch.tensor(shape, dtype=torch.long, device=device)
    shapes = [torch.empty_like(local) for _ in range(dist.get_world_size(group=group))]
    dist.all_gather(shapes, local, group=group)
    return [s.tolist() for s in shapes]


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0 (row counts may differ); gradient flows back.

    The backward all-reduces (sums) the gradient of the gathered tensor over ranks and keeps this
    rank's rows: each rank's rows receive the sum of every rank's gradient for them. All-reduce is
    used rather than reduce-scatter because every backend (gloo included) supports it.
    """

    @staticmethod
    def forward(ctx, tensor, row_counts, rank, group):
        ctx.group = group
        ctx.start = sum(row_counts[:rank])
        ctx.rows = row_counts[rank]
        max_rows = max(row_counts)
        # all_gather needs equal shapes: pad short batches with zero rows, drop them afterwards.
        padded = tensor.contiguous()
        if tensor.shape[0] < max_rows:
            padded = tensor.new_zeros((max_rows, *tensor.shape[1:]))
            padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in row_counts]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[:count] for part, count in zip(parts, row_counts)])

    @staticmethod
    def backward(ctx, grad_gathered):
        grad_gathered = grad_gathered.contiguous().clone()
        dist.all_reduce(grad_gathered, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad_gathered[ctx.start: ctx.start + ctx.rows], None, None, None


def _gather_rows(tensor: torch.Tensor, group=None, row_counts: list[int] | None = None):
    """(gathered tensor, index of this rank's first row in it). `row_counts` skips the size exchange."""
    rank, world_size = get_rank_and_world_size(group)
    if world_size == 1:
        return tensor, 0
    if row_counts is None:
        shapes = _all_gather_shapes(list(tensor.shape), group, tensor.device)
        if any(shape[1:] != list(tensor.shape[1:]) for shape in shapes):
            raise ValueError(
                f"gather_with_grad: every rank must pass a tensor of the same shape apart from dim 0; "
                f"got shapes {shapes} on ranks 0..{world_size - 1}."
            )
        row_counts = [shape[0] for shape in shapes]
    return _GatherRows.apply(tensor, row_counts, rank, group), sum(row_counts[:rank])


def gather_with_grad(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """All-gather `tensor` along dim 0 from every rank of `group`, keeping the gradient.

    The result is the ranks' tensors concatenated in rank order (their dim 0 may differ; the other
    dims must match). In backward, each rank's slice receives the **sum over ranks** of the gradient
    flowing into it. Without an initialised process group (or with one rank) `tensor` is returned.

    >>> x = torch.randn(3, 4)
    >>> gather_with_grad(x) is x
    True
    """
    return _gather_rows(tensor, group)[0]


def _global_loss(share: torch.Tensor, world_size: int, group) -> torch.Tensor:
    """Turn this rank's share of the global loss (the shares sum to it) into the global loss.

    Value: the sum of all ranks' shares. Gradient: `world_size x` the share's own gradient, i.e.
    what this rank's backward would give had it computed the whole global loss (see module doc).
    """
    if world_size == 1:
        return share
    total = share.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    scaled = world_size * share
    return scaled + (total - scaled.detach())


# ------------------------------------------------------------------------------------ checks
def _check_embeddings(name: str, tensor: torch.Tensor, ndim: int, layout: str) -> None:
    if not torch.is_tensor(tensor) or tensor.ndim != ndim:
        shape = tuple(tensor.shape) if torch.is_tensor(tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a tensor of shape {layout}; got {shape}.")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} holds an empty batch (shape {tuple(tensor.shape)}); "
                         f"a loss needs at least one sample.")


def _check_pair(function: str, first_name: str, first, second_name: str, second) -> None:
    _check_embeddings(f"{function}: {first_name}", first, 2, "[B, D]")
    _check_embeddings(f"{function}: {second_name}", second, 2, "[B, D]")
    if first.shape != second.shape:
        raise ValueError(
            f"{function}: {first_name} and {second_name} must have the same shape [B, D]; "
            f"got {tuple(first.shape)} and {tuple(second.shape)}."
        )


def _scale_from_log(function: str, logit_scale) -> torch.Tensor:
    """exp(logit_scale) as a 0-dim tensor; `logit_scale` is the log inverse temperature."""
    if not torch.is_tensor(logit_scale):
        logit_scale = torch.tensor(float(logit_scale))
    if logit_scale.numel() != 1:
        raise ValueError(
            f"{function}: logit_scale must hold one value (the log inverse temperature, a 0-dim tensor); "
            f"got shape {tuple(logit_scale.shape)}."
        )
    return logit_scale.reshape(()).exp()


def _cross_entropy_sum(logits: torch.Tensor, first_target: int) -> torch.Tensor:
    """Sum over rows of CE(logits[r], first_target + r): the rows are consecutive samples."""
    targets = torch.arange(first_target, first_target + logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, targets, reduction="sum")


# ---------------------------------------------------------------------------- image-report CLIP
def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                     *, gather: bool = False, group=None) -> torch.Tensor:
    """CLIP loss `CE(s img @ txt^T) + CE(s txt @ img^T)`, s = exp(logit_scale), sum of both directions.

    Args:
        image_embeds, text_embeds: [B, D], already L2-normalised; row i of each is one pair.
        logit_scale: 0-dim tensor holding ln(1 / temperature) (paper init ln(1/0.07)).
        gather: compute over the batch of every rank (see the module doc for the exact convention).
        group: the process group for `gather` (default: the world).

    >>> import math
    >>> pairs = torch.eye(3)                            # three perfectly matched, orthogonal pairs
    >>> loss = contrastive_loss(pairs, pairs, torch.tensor(math.log(10.0)))
    >>> math.isclose(loss.item(), 2 * math.log(1 + 2 * math.exp(-10.0)), abs_tol=1e-6)  # near 0
    True
    """
    _check_pair("contrastive_loss", "image_embeds", image_embeds, "text_embeds", text_embeds)
    scale = _scale_from_log("contrastive_loss", logit_scale)
    _, world_size = get_rank_and_world_size(group) if gather else (0, 1)
    if world_size == 1:
        logits_per_image = scale * image_embeds @ text_embeds.t()
        batch = logits_per_image.shape[0]
        return (_cross_entropy_sum(logits_per_image, 0) + _cross_entropy_sum(logits_per_image.t(), 0)) / batch

    # One gather for both towers: rows are (image, text) pairs.
    pairs, first_row = _gather_rows(torch.stack([image_embeds, text_embeds], dim=1), group)
    all_images, all_texts = pairs.unbind(dim=1)
    share = (_cross_entropy_sum(scale * image_embeds @ all_texts.t(), first_row)
             + _cross_entropy_sum(scale * text_embeds @ all_images.t(), first_row)) / pairs.shape[0]
    return _global_loss(share, world_size, group)


# ---------------------------------------------------------------------- multi-view NT-Xent
def _nt_xent_anchor_sum(anchors, same_view, other_view, first_row: int, temperature: float) -> torch.Tensor:
    """Sum of the NT-Xent CE of `anchors` (rows first_row.. of `same_view`) against the global batch.

    Logits of anchor i: [a_i . other_j for every j] then [a_i . same_k for every k], the k = i entry
    set to -inf, which is the same CE as leaving it out (METHOD 2.2's "k != i").
    """
    cross = anchors @ other_view.t() / temperature
    same = anchors @ same_view.t() / temperature
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    is_self = torch.zeros_like(same, dtype=torch.bool)
    is_self[rows, first_row + rows] = True
    logits = torch.cat([cross, same.masked_fill(is_self, float("-inf"))], dim=1)
    return _cross_entropy_sum(logits, first_row)


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5,
                 *, gather: bool = True, group=None) -> torch.Tensor:
    """SimCLR NT-Xent between two views, mean over all 2B anchors; symmetric in (z_a, z_b).

    For anchor z_a_i the logits are [z_a_i . z_b_j for all j] followed by [z_a_i . z_a_k for k != i],
    divided by `temperature`, target j = i; likewise for z_b_i. Inputs are L2-normalised here.
    With `gather` (default on) the negatives come from every rank and the value equals the
    single-process loss over the concatenated batch (convention in the module doc).

    Args:
        z_a, z_b: [B, D], row i of each is a view of the same exam.
        temperature: fixed NT-Xent temperature (paper 0.5).

    >>> import math
    >>> same = torch.ones(3, 4)                         # every view identical: 2B - 1 equal logits
    >>> math.isclose(nt_xent_loss(same, same).item(), math.log(5), rel_tol=1e-6)
    True
    """
    _check_pair("nt_xent_loss", "z_a", z_a, "z_b", z_b)
    if not float(temperature) > 0:
        raise ValueError(f"nt_xent_loss: temperature must be > 0; got {temperature}.")
    temperature = float(temperature)
    z_a, z_b = F.normalize(z_a, dim=-1), F.normalize(z_b, dim=-1)
    _, world_size = get_rank_and_world_size(group) if gather else (0, 1)
    all_a, all_b, first_row = z_a, z_b, 0
    if world_size > 1:
        views, first_row = _gather_rows(torch.stack([z_a, z_b], dim=1), group)
        all_a, all_b = views.unbind(dim=1)
    share = (_nt_xent_anchor_sum(z_a, all_a, all_b, first_row, temperature)
             + _nt_xent_anchor_sum(z_b, all_b, all_a, first_row, temperature)) / (2 * all_a.shape[0])
    return _global_loss(share, world_size, group)


# ------------------------------------------------------------------ symmetric local alignment
def _sla_scores(patch_embeds, patch_mask, sentence_embeds, sentence_mask, chunk_size: int | None):
    """Report-by-image SLA scores (t2i, i2t), each [n_reports, n_images], before the scale.

    t2i[i, j] = mean over real k of max over real p of <P_j,p, T_i,k>;
    i2t[i, j] = mean over real p of max over real k of <P_j,p, T_i,k>.
    The [images, P, reports, S] similarities are built `chunk_size` images at a time.
    """
    n_reports, n_sentences, dim = sentence_embeds.shape
    n_images, n_patches, _ = patch_embeds.shape
    if chunk_size is None:
        chunk_size = max(1, SLA_CHUNK_ELEMENTS // (n_reports * n_patches * n_sentences))
    flat_sentences = sentence_embeds.reshape(n_reports * n_sentences, dim).t()
    sentence_counts = sentence_mask.sum(dim=1).to(sentence_embeds.dtype)  # [reports]
    any_padded_sentence = not bool(sentence_mask.all())
    t2i_blocks, i2t_blocks = [], []
    # split (not slicing) so the backward concatenates the blocks' gradients once, instead of
    # materialising a full-size zero gradient per block
    for start, patches in zip(range(0, n_images, chunk_size), patch_embeds.split(chunk_size)):
        n_block = patches.shape[0]
        # One GEMM per block; layout [image j, patch p, report i, sentence k].
        similarity = (patches.reshape(n_block * n_patches, dim) @ flat_sentences).view(
            n_block, n_patches, n_reports, n_sentences)
        # Padded patches / sentences must never be the best match of anything.
        if patch_mask is not None:
            block_patch_mask = patch_mask[start: start + n_block]
            similarity.masked_fill_(~block_patch_mask[:, :, None, None], float("-inf"))
        if any_padded_sentence:
            similarity.masked_fill_(~sentence_mask[None, None], float("-inf"))

        best_patch = similarity.max(dim=1).values  # [j, i, k]: best patch per sentence
        t2i = best_patch.masked_fill(~sentence_mask[None], 0.0).sum(dim=2) / sentence_counts  # [j, i]
        best_sentence = similarity.max(dim=3).values  # [j, p, i]: best sentence per patch
        if patch_mask is None:
            i2t = best_sentence.mean(dim=1)
        else:
            patch_counts = block_patch_mask.sum(dim=1, keepdim=True).to(best_sentence.dtype)
            i2t = best_sentence.masked_fill(~block_patch_mask[:, :, None], 0.0).sum(dim=1) / patch_counts
        t2i_blocks.append(t2i)
        i2t_blocks.append(i2t)
    return torch.cat(t2i_blocks).t(), torch.cat(i2t_blocks).t()


def _empty_rows(mask: torch.Tensor | None) -> list[int]:
    return [] if mask is None else torch.nonzero(~mask.any(dim=1)).flatten().tolist()


def _pad_dim1(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad dim 1 of `tensor` up to `size`."""
    if tensor.shape[1] == size:
        return tensor
    return F.pad(tensor, (0, 0) * (tensor.ndim - 2) + (0, size - tensor.shape[1]))


def local_alignment_loss(patch_embeds: torch.Tensor, sentence_embeds: torch.Tensor, sentence_mask: torch.Tensor,
                         logit_scale: torch.Tensor, symmetric: bool = True, *, patch_mask: torch.Tensor | None = None,
                         gather: bool = False, group=None, chunk_size: int | None = None) -> torch.Tensor:
    """Symmetric local alignment (SLA) between image patches and report sentences.

    Rows are reports i, columns images j, Sim_i[j, p, k] = <P_j,p, T_i,k>:
    `t2i[i, j]` = mean over report i's real sentences k of the best patch of image j;
    `i2t[i, j]` = mean over image j's real patches p of the best real sentence of report i.
    Both are multiplied by s_loc = exp(logit_scale). Returns `CE(t2i) + CE(t2i^T)`, plus
    `CE(i2t) + CE(i2t^T)` when `symmetric`.

    Args:
        patch_embeds: [B, P, D] L2-normalised patch embeddings (image j = row j).
        sentence_embeds: [B, S, D] L2-normalised sentence embeddings, padded to S per batch.
        sentence_mask: bool [B, S], True for real sentences. Padded sentences never count, not even
            as the best sentence of a patch. Every report needs at least one real sentence.
        logit_scale: 0-dim tensor holding ln(s_loc) (the model's `local_scale`).
        symmetric: add the image->text direction (paper: on).
        patch_mask: optional bool [B, P], True for real patches (tiles of different breasts).
        gather: compute over the batch of every rank (convention in the module doc).
        group: the process group for `gather`.
        chunk_size: images per similarity block; None picks about SLA_CHUNK_ELEMENTS elements per
            block. Only memory and speed depend on it, not the value. Peak memory is one block and
            its backward temporaries plus about twice the size of `patch_embeds` (its gradient);
            the [B, B, P, S] similarity tensor is never built whole.

    >>> import math
    >>> patches = torch.eye(2)[:, None, :].repeat(1, 3, 1)        # image j: 3 patches equal to e_j
    >>> sentences = torch.eye(2)[:, None, :]                        # report i: one sentence e_i
    >>> loss = local_alignment_loss(patches, sentences, torch.ones(2, 1, dtype=torch.bool), torch.tensor(0.0))
    >>> math.isclose(loss.item(), 4 * math.log(1 + math.exp(-1.0)), rel_tol=1e-6)
    True
    """
    function = "local_alignment_loss"
    _check_embeddings(f"{function}: patch_embeds", patch_embeds, 3, "[B, P, D]")
    _check_embeddings(f"{function}: sentence_embeds", sentence_embeds, 3, "[B, S, D]")
    batch, n_patches, dim = patch_embeds.shape
    if sentence_embeds.shape[0] != batch or sentence_embeds.shape[2] != dim:
        raise ValueError(
            f"{function}: patch_embeds [B, P, D] and sentence_embeds [B, S, D] must share B and D; "
            f"got {tuple(patch_embeds.shape)} and {tuple(sentence_embeds.shape)}."
        )
    if tuple(sentence_mask.shape) != tuple(sentence_embeds.shape[:2]):
        raise ValueError(
            f"{function}: sentence_mask must have shape [B, S] = {tuple(sentence_embeds.shape[:2])}; "
            f"got {tuple(sentence_mask.shape)}."
        )
    if patch_mask is not None and tuple(patch_mask.shape) != (batch, n_patches):
        raise ValueError(
            f"{function}: patch_mask must have shape [B, P] = {(batch, n_patches)}; got {tuple(patch_mask.shape)}."
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"{function}: chunk_size must be a positive number of images or None; got {chunk_size}.")
    sentence_mask = sentence_mask.to(device=sentence_embeds.device, dtype=torch.bool)
    if patch_mask is not None:
        patch_mask = patch_mask.to(device=patch_embeds.device, dtype=torch.bool)
    scale = _scale_from_log(function, logit_scale)
    _, world_size = get_rank_and_world_size(group) if gather else (0, 1)

    # Validate before any collective; under gather every rank learns of any rank's bad input and
    # raises, instead of the healthy ranks hanging in the next collective.
    empty_reports, empty_images = _empty_rows(sentence_mask), _empty_rows(patch_mask)
    if world_size > 1:
        shapes = _all_gather_shapes([batch, n_patches, sentence_embeds.shape[1], dim,
                                     len(empty_reports), len(empty_images)], group, sentence_embeds.device)
    else:
        shapes = [[batch, n_patches, sentence_embeds.shape[1], dim, len(empty_reports), len(empty_images)]]
    if any(shape[4] or shape[5] for shape in shapes):
        where = "" if world_size == 1 else f" on rank(s) {[r for r, s in enumerate(shapes) if s[4] or s[5]]}"
        raise ValueError(
            f"{function}: every report needs at least one real sentence and every image at least one real "
            f"patch{where}; reports with no True in sentence_mask: {empty_reports}, images with no True in "
            f"patch_mask: {empty_images} (indices on this rank). Drop them from the batch, or check that the "
            f"reports contain sentence-separator tokens."
        )
    if any(shape[3] != dim for shape in shapes):
        raise ValueError(f"{function}: every rank must use the same embedding width D; got {[s[3] for s in shapes]}.")

    def summed_cross_entropy(t2i: torch.Tensor, i2t: torch.Tensor, first_row: int) -> torch.Tensor:
        """Summed CEs of these score rows (report rows, or image rows of the transposed scores)."""
        terms = [t2i, i2t] if symmetric else [t2i]
        return sum(_cross_entropy_sum(scale * term, first_row) for term in terms)

    if world_size == 1:
        t2i, i2t = _sla_scores(patch_embeds, patch_mask, sentence_embeds, sentence_mask, chunk_size)
        return (summed_cross_entropy(t2i, i2t, 0) + summed_cross_entropy(t2i.t(), i2t.t(), 0)) / batch

    # Pad patches / sentences to the largest count over ranks (masked out), then gather.
    row_counts = [shape[0] for shape in shapes]
    max_patches, max_sentences = max(s[1] for s in shapes), max(s[2] for s in shapes)
    local_patch_mask = patch_mask if patch_mask is not None else torch.ones(
        batch, n_patches, dtype=torch.bool, device=patch_embeds.device)
    all_patches, first_row = _gather_rows(_pad_dim1(patch_embeds, max_patches), group, row_counts)
    all_patch_mask, _ = _gather_rows(_pad_dim1(local_patch_mask.long(), max_patches), group, row_counts)
    all_sentences, _ = _gather_rows(_pad_dim1(sentence_embeds, max_sentences), group, row_counts)
    all_sentence_mask, _ = _gather_rows(_pad_dim1(sentence_mask.long(), max_sentences), group, row_counts)
    all_patch_mask, all_sentence_mask = all_patch_mask.bool(), all_sentence_mask.bool()
    if patch_mask is None and bool(all_patch_mask.all()):
        all_patch_mask = None

    # This rank's reports against every image (rows of t2i, i2t) and every report against this
    # rank's images (rows of t2i^T, i2t^T).
    t2i_rows, i2t_rows = _sla_scores(all_patches, all_patch_mask, sentence_embeds, sentence_mask, chunk_size)
    t2i_columns, i2t_columns = _sla_scores(patch_embeds, patch_mask, all_sentences, all_sentence_mask, chunk_size)
    share = (summed_cross_entropy(t2i_rows, i2t_rows, first_row)
             + summed_cross_entropy(t2i_columns.t(), i2t_columns.t(), first_row)) / all_patches.shape[0]
    return _global_loss(share, world_size, group)
