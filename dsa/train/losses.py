"""The DSA recipe's losses (docs/model-and-ops.md 8, the V3.2-Exp paper) on a TrainOutput, and the indexer's
recall of the dense attention mass.

    indexer_kl(aux, restrict=False)   warm-up: sum over rows of KL(p_t || softmax(I_t)) over the visible keys,
                                      p_t = the main attention summed over heads, L1-normalised
    indexer_kl(aux, restrict=True)    sparse stage: the same KL on each row's selected set S_t only
    attention_recall(aux, k)          share of p_t that falls on the top-k keys of I_t (rows that see > k keys)
    oracle_recall(aux, k)             the best any selection of k keys can do: p_t's own top-k mass (same rows)
    recall_sums(aux_per_layer, k)     both, times their rows, per layer: one forward's terms of a mean over many
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dsa.train.graph import LayerAux, topk_mask


def lm_loss(logits: Tensor, ids: Tensor) -> Tensor:
    """Next-token cross entropy: logits [B, L, V] of ids[:, :-1] against ids[:, 1:] ([B, L + 1])."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def indexer_kl(aux: LayerAux, restrict: bool = False) -> Tensor:
    """Mean over query rows of KL(p || softmax(I)) (nats). restrict: both sides on the selected set only."""
    p = aux.attention  # [B, L, L], rows sum to 1 over the keys the main attention used
    scores = aux.index_scores  # -inf where not visible
    if restrict:
        if aux.selected is None:
            raise ValueError("restrict=True needs the sparse mode's selection")
        scores = scores.masked_fill(~aux.selected, float("-inf"))
        p = p.masked_fill(~aux.selected, 0.0)
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    log_q = torch.log_softmax(scores, dim=-1)
    pos = p > 0
    kl = torch.where(pos, p * (torch.log(p.clamp_min(1e-30)) - log_q), torch.zeros_like(p)).sum(-1)  # [B, L]
    return kl.mean()


@torch.no_grad()
def attention_recall(aux: LayerAux, k: int) -> tuple[float, int]:
    """(mean over rows that see more than k keys of the dense attention mass on the indexer's top-k, rows)."""
    p, scores = aux.attention, aux.index_scores
    visible = torch.isfinite(scores)
    rows = visible.sum(-1) > k  # [B, L]
    if not bool(rows.any()):
        return float("nan"), 0
    chosen = topk_mask(scores, visible, k)
    mass = (p * chosen).sum(-1)  # [B, L]
    return float(mass[rows].mean()), int(rows.sum())


@torch.no_grad()
def oracle_recall(aux: LayerAux, k: int) -> tuple[float, int]:
    """(mean over rows that see more than k keys of the mass of p's own k largest entries, rows): the ceiling of
    attention_recall. Diffuse attention (a layer that averages over many keys) keeps it well below 1."""
    p, visible = aux.attention, torch.isfinite(aux.index_scores)
    rows = visible.sum(-1) > k
    if not bool(rows.any()):
        return float("nan"), 0
    mass = p.topk(min(k, p.shape[-1]), dim=-1).values.sum(-1)
    return float(mass[rows].mean()), int(rows.sum())


@torch.no_grad()
def recall_sums(aux: Sequence[LayerAux], k: int, empty: float = 0.0) -> tuple[list[float], list[float], int]:
    """One forward's (attention_recall x rows, oracle_recall x rows) per layer, for a mean over many forwards,
    and the rows (the first layer's). `empty`: a layer's terms when it has no such rows."""
    mass, best, rows = [], [], []
    for a in aux:
        r, n = attention_recall(a, k)
        mass.append(r * n if n else empty)
        best.append(oracle_recall(a, k)[0] * n if n else empty)
        rows.append(n)
    return mass, best, rows[0]


__all__ = ["lm_loss", "indexer_kl", "attention_recall", "oracle_recall", "recall_sums"]
