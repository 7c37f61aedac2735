"""Losses over the whole catalogue.

`linear_cross_entropy(h, W, y)` equals `cross_entropy(h @ W.T, y)` with column 0 (padding)
excluded, but never holds the [N, n_items] logits: it walks row chunks that stay in cache
and computes the gradient in the same pass (the fused "linear cross-entropy" of Liger and
Apple's Cut-Cross-Entropy). On ML-1M (N = 25,600 positions x 3,417 items per batch) the
plain version spends most of a step allocating and re-reading the logits tensor.

`sampled_softmax_cross_entropy` scores the target against K uniform negatives shared by the
whole batch (gSASRec's setting, K = 256): [N, 1 + K] logits instead of [N, n_items], with
accidental hits masked and an optional logQ correction.
"""

from __future__ import annotations

import math

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_size: int, matmul_dtype: torch.dtype) -> torch.Tensor:
        n = hidden.shape[0]
        w = weight.to(matmul_dtype)  # [V, D] bf16 halves the matmul time on AVX512-BF16/AMX CPUs
        needs_grad = hidden.requires_grad or weight.requires_grad
        # Pad to whole chunks: every matmul then has one shape, which oneDNN's per-shape
        # primitive cache needs (varying bf16 shapes grew RSS by MBs per step).
        pad = (-n) % chunk_size
        hidden_p = torch.cat([hidden.detach(), hidden.new_zeros(pad, hidden.shape[1])])  # [n + pad, D]
        targets_p = torch.cat([targets, targets.new_ones(pad)])  # [n + pad]
        cols = torch.arange(chunk_size, device=hidden.device)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden_p) if needs_grad else None
        grad_weight = torch.zeros_like(weight) if needs_grad else None
        for start in range(0, n, chunk_size):
            h = hidden_p[start : start + chunk_size].to(matmul_dtype)  # [c, D]
            y = targets_p[start : start + chunk_size]  # [c]
            real = min(chunk_size, n - start)  # columns past it are padding
            # Logits transposed, [V, c]: W @ h.T runs 2-3x faster than h @ W.T when D is small
            # (measured with MKL on AVX2); the softmax then reduces over dim 0.
            logits = (w @ h.T).float()  # [V, c] softmax always in fp32
            logits[0] = float("-inf")  # padding is never an answer
            target_logit = logits[y, cols]  # [c]
            col_max = logits.amax(0)  # [c]
            exp = logits.sub_(col_max).exp_()  # in place: one pass over the chunk
            total = exp.sum(0)  # [c]
            loss += (col_max + total.log() - target_logit)[:real].sum()
            if needs_grad:
                probs = exp.div_(total)  # softmax [V, c]
                probs[y, cols] -= 1.0  # d loss / d logits
                probs[:, real:] = 0.0  # padding columns give no gradient
                p = probs.to(matmul_dtype)
                grad_hidden[start : start + chunk_size] = p.T @ w  # [c, D]
                grad_weight += (p @ h).float()  # [V, D]
        if needs_grad:
            ctx.save_for_backward(grad_hidden[:n] / n, grad_weight / n)
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = 512, matmul_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean cross-entropy of softmax(hidden @ weight.T) over columns 1.. (0 = padding).

    hidden float [N, D]; weight float [V, D] (row 0 = padding); targets int [N] in 1..V-1.
    matmul_dtype=torch.bfloat16 runs the three matmuls in bf16 (softmax and sums stay fp32).
    """
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_size, matmul_dtype)


def resolve_matmul_dtype(name: str, device: torch.device) -> torch.dtype:
    """`task.ce_matmul_dtype` -> a dtype; "auto" is bfloat16 only where it runs natively.

    On CPUs without AVX512/AMX oneDNN emulates bf16 matmuls: 6x slower than fp32 on an AVX2
    EPYC, where the same setting was 1.6x faster on an AVX512 Xeon.
    """
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name != "auto":
        if name not in choices:
            raise ValueError(f"task.ce_matmul_dtype must be auto or one of {sorted(choices)}, got {name!r}")
        return choices[name]
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if native else torch.float32


def sample_negatives(shape: tuple[int, ...], n_items: int, device: torch.device) -> torch.Tensor:
    """int `shape` item ids drawn uniformly (with replacement) from 1..n_items, on `device` with
    the global torch generator (seeded by Lightning's seed_everything)."""
    return torch.randint(1, n_items + 1, shape, device=device)


def sampled_softmax_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                  negatives: torch.Tensor, logq_correction: bool = True,
                                  matmul_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean cross-entropy of each target against itself plus K uniform negatives.

    hidden float [B, T, D]; weight float [V, D] (row 0 = padding, V - 1 = n_items); targets int
    [B, T] in 1..V-1, 0 = no loss at that position; negatives int [K] (shared by the batch) or
    [B, K] (shared by the positions of one sequence), drawn uniformly with replacement. Per-sequence
    negatives cost the same FLOPs as shared ones but give every item embedding a gradient each step
    (B x K draws), which Adam's per-parameter step needs. A negative equal to a position's target
    (an accidental hit) is masked out there. With `logq_correction` the negatives' logits get
    + log(n_items / K), the log of 1 / (K q) for uniform q = 1 / n_items: the sum of their exps is
    then an unbiased estimate of the full softmax's denominator (minus the target), so the loss
    estimates full cross-entropy, and with negatives = every item once it equals it exactly.
    Without it the loss is the plain sampled softmax over 1 + K candidates. The softmax runs in
    fp32 whatever `matmul_dtype`.
    """
    h = hidden.to(matmul_dtype)
    neg_w = weight[negatives].to(matmul_dtype)  # [K, D] or [B, K, D]
    if negatives.dim() == 1:
        neg = (h @ neg_w.T).float()  # [B, T, K]
        hits = negatives.view(1, 1, -1) == targets.unsqueeze(-1)  # [B, T, K]
    else:
        neg = torch.bmm(h, neg_w.transpose(1, 2)).float()  # [B, T, K]
        hits = negatives.unsqueeze(1) == targets.unsqueeze(-1)  # [B, T, K]
    if logq_correction:
        neg = neg + math.log((weight.shape[0] - 1) / negatives.shape[-1])
    pos = (hidden * weight[targets]).sum(-1, keepdim=True).float()  # [B, T, 1]
    logits = torch.cat([pos, neg.masked_fill(hits, float("-inf"))], -1)  # [B, T, 1 + K], target first
    mask = targets > 0  # [B, T]
    logits = logits[mask]  # [N, 1 + K]
    return torch.nn.functional.cross_entropy(logits, targets.new_zeros(logits.shape[0]))
