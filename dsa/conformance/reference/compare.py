"""Comparison rules of docs/model-and-ops.md 7.

assert_close: identical non-finite positions, then per-element (abs <= atol OR rel <= rtol), then the
global difference 1 - 2<a,b> / (|a|^2 + |b|^2) <= cos_eps.
assert_topk_equivalent: top-k index rows compared as sets, tie-aware.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .fp8 import to_f64

WORST_SHOWN = 5

# Set by `dsa conformance` (dsa/conformance/runner.py): called by assert_close with (name, stats) before it
# decides, stats = {"abs": max |a-e|, "rel": max |a-e|/|e| over |e| > atol, "cos": global difference,
# "tol_ratio": max |a-e| / max(atol, rtol*|e|) (<= 1 passes), "nonfinite_mismatch": bool}. None = off.
recorder: Optional[Callable[[str, dict], None]] = None


def _record(name: str, a: Tensor, e: Tensor, atol: float, rtol: float) -> None:
    both = torch.isfinite(a) & torch.isfinite(e)
    af, ef = a[both], e[both]
    diff = (af - ef).abs()
    big = ef.abs() > atol
    stats = {
        "abs": float(diff.max()) if diff.numel() else 0.0,
        "rel": float((diff[big] / ef[big].abs()).max()) if big.any() else 0.0,
        "cos": global_diff(af, ef) if diff.numel() else 0.0,
        "tol_ratio": float(torch.where(diff == 0, 0.0, diff / torch.clamp(rtol * ef.abs(), min=atol)).max())
        if diff.numel() else 0.0,
        "nonfinite_mismatch": not torch.equal(torch.isfinite(a), torch.isfinite(e)),
    }
    recorder(name, stats)


def _where(mask: Tensor, limit: int = WORST_SHOWN) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in pos) for pos in mask.nonzero()[:limit]]


def global_diff(a: Tensor, b: Tensor) -> float:
    """1 - 2<a,b> / (|a|^2 + |b|^2) in float64; 0 when both are all zero."""
    a, b = a.double().flatten(), b.double().flatten()
    denom = float((a * a).sum() + (b * b).sum())
    return 0.0 if denom == 0.0 else 1.0 - 2.0 * float((a * b).sum()) / denom


def assert_close(
    actual: Tensor, expected: Tensor, atol: float, rtol: float, cos_eps: float, name: str = "tensor"
) -> None:
    """Fail with the worst offenders unless `actual` matches the oracle's `expected` (docs/model-and-ops.md 7).

    The relative difference is taken against the expected (oracle) value.
    """
    a, e = to_f64(actual.detach().cpu()), to_f64(expected.detach().cpu())
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if recorder is not None:
        _record(name, a, e, atol, rtol)

    for label, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        ma, me = test(a), test(e)
        if not torch.equal(ma, me):
            raise AssertionError(
                f"{name}: {label} positions differ: actual only at {_where(ma & ~me)}, "
                f"expected only at {_where(me & ~ma)}"
            )

    finite = torch.isfinite(e)
    af, ef = a[finite], e[finite]
    diff = (af - ef).abs()
    allowed = torch.maximum(torch.full_like(diff, atol), rtol * ef.abs())
    bad = diff > allowed
    if bad.any():
        excess = torch.where(bad, diff / allowed, torch.zeros_like(diff))
        worst = excess.argsort(descending=True)[: min(WORST_SHOWN, int(bad.sum()))]
        positions = finite.nonzero()
        lines = [
            f"  at {tuple(int(i) for i in positions[j])}: actual {af[j].item():.8g} expected {ef[j].item():.8g} "
            f"(abs diff {diff[j].item():.3g}, rel {diff[j].item() / max(abs(ef[j].item()), 1e-300):.3g})"
            for j in worst.tolist()
        ]
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {diff.numel()} elements exceed atol={atol:g} and rtol={rtol:g}; worst:\n"
            + "\n".join(lines)
        )

    d = global_diff(af, ef)
    if d > cos_eps:
        raise AssertionError(f"{name}: global difference {d:.3g} > {cos_eps:g} (all elements within atol/rtol)")


def assert_topk_equivalent(actual_idx: Tensor, ref_scores: Tensor, k_valid: Tensor, tie_tol: float = 1e-5) -> None:
    """Check top-k rows against the oracle's full score matrix (-inf = not visible).

    Per row t: exactly k_valid[t] entries that are not -1, all of them first; distinct, visible keys;
    and the selection is a correct top-k up to ties: every selected key scores at least as high as
    every visible key left out, within tie_tol * max(1, |score|). Set differences against the oracle's
    own top-k are reported when a row fails.
    """
    idx = actual_idx.detach().cpu().long()
    scores = ref_scores.detach().cpu().double()
    T, S = scores.shape
    if idx.shape[0] != T:
        raise AssertionError(f"indices have {idx.shape[0]} rows, expected {T}")
    problems = []
    for t in range(T):
        row = idx[t].tolist()
        n = sum(1 for v in row if v != -1)
        want = int(k_valid[t])
        sel = row[:n]
        if any(v == -1 for v in sel) or any(v != -1 for v in row[n:]):
            first_pad = row.index(-1)
            late = next(j for j in range(first_pad, len(row)) if row[j] != -1)
            problems.append(f"row {t}: -1 padding is not at the end "
                            f"(-1 at column {first_pad}, index {row[late]} at column {late})")
            continue
        if n != want:
            problems.append(f"row {t}: {n} valid indices, expected {want}")
            continue
        if len(set(sel)) != n:
            problems.append(f"row {t}: duplicate indices {sorted(v for v in set(sel) if sel.count(v) > 1)}")
            continue
        if any(not 0 <= v < S for v in sel) or not torch.isfinite(scores[t, sel]).all():
            bad = [v for v in sel if not 0 <= v < S or not torch.isfinite(scores[t, v])]
            problems.append(f"row {t}: selected keys outside the visible range: {bad}")
            continue
        if n == 0:
            continue
        left_out = torch.isfinite(scores[t])
        left_out[sel] = False
        if not left_out.any():
            continue
        lowest_in = scores[t, sel].min().item()
        highest_out = scores[t][left_out].max().item()
        if lowest_in < highest_out - tie_tol * max(1.0, abs(highest_out)):
            ref_top = set(scores[t].topk(want).indices.tolist())
            only_actual = sorted(set(sel) - ref_top)
            only_ref = sorted(ref_top - set(sel))
            problems.append(
                f"row {t}: not a top-{want}: selected-only {[(v, round(scores[t, v].item(), 6)) for v in only_actual]} "
                f"vs oracle-only {[(v, round(scores[t, v].item(), 6)) for v in only_ref]}"
            )
    if recorder is not None:
        recorder("top-k", {"topk_rows": T, "topk_bad_rows": len(problems)})
    if problems:
        raise AssertionError(f"{len(problems)} of {T} top-k rows wrong:\n  " + "\n  ".join(problems[:WORST_SHOWN]))
