"""Check and time the Triton kernels of every HAL op on a GPU, at the 671B model's shapes.

    python -m dsa.bench.gpu_ops                 # checks, then the timing table (a few minutes in all)
    python -m dsa.bench.gpu_ops --only indexer  # only cases whose op contains this
    python -m dsa.bench.gpu_ops --peak 989,1979,4.8   # roofline of a card not in PEAKS (TFLOP/s bf16, fp8, TB/s)

1. Checks: every op's "triton" provider against the "torch" provider (dsa.hal.registry) on fresh random
   inputs with the 671B dimensions (smaller contexts): float outputs within the conformance suite's
   bf16 rule (|d| <= 1e-2 or |d| <= 2/128 |ref|, global difference <= 5e-6), act_quant bit-exact,
   top-k selections equivalent up to ties of the torch provider's scores.
2. Timing: triton.testing.do_bench (median ms) at decode and prefill shapes (128 heads, 576 / 512,
   top-k 2048, contexts 4K..128K; indexer 64 x 128; MoE 256 experts, 7168 / 2048). Each row prints
   achieved TFLOP/s and GB/s, the roofline floor (max of FLOPs / peak and bytes / bandwidth, from the
   cost functions of dsa/bench/gpu_costs.py, which the unit tests check) and the same op from the torch
   provider on the same GPU and from the vendor providers (flashmla, deepgemm, aiter, tilelang) where they are
   importable here. The dense baseline (`dense_attention` rows: torch's SDPA of a decode batch over every
   cached token, bf16) is timed next to the sparse decode and the indexer at the same contexts.
3. The decode comparison of issue 16's targets (ratio_lines): per context at batch 64, dense ms / indexer ms
   and the sparse decode's share of its roofline floor.
Needs a CUDA or ROCm GPU; exits with a message otherwise.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

from dsa.bench.gpu_costs import (  # the 671B dimensions and the cost arithmetic
    CONTEXTS,
    D_QK,
    D_V,
    DECODE_BATCH,
    EXPERTS,
    EXPERTS_PER_TOKEN,
    HEADS,
    HIDDEN,
    INDEX_DIM,
    INDEX_HEADS,
    MOE_INTER,
    PEAKS,
    PREFILL_CHUNK,
    ROPE,
    TOPK,
    Cost,
    Peak,
    act_quant_cost,
    causal_pairs,
    cdiv,
    dense_decode_cost,
    fp8_linear_cost,
    grouped_gemm_cost,
    indexer_cost,
    sparse_mla_decode_cost,
    sparse_mla_prefill_cost,
)

VENDORS = ("flashmla", "deepgemm", "aiter", "tilelang")
COMPARED = ("torch", *VENDORS)  # timed next to triton on the same inputs, where installed and accepting them


def _gpu_or_exit():
    import os

    import torch

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("python -m dsa.bench.gpu_ops: TRITON_INTERPRET is set: the Triton kernels would run in the CPU "
                 "interpreter. Unset it to benchmark on the GPU.")
    if not torch.cuda.is_available():
        sys.exit("python -m dsa.bench.gpu_ops needs a CUDA or ROCm GPU, and torch sees none "
                 "(torch.cuda.is_available() is False). Nothing was checked or timed; the CPU checks of these "
                 "kernels are the conformance "
                 "tests under TRITON_INTERPRET=1.")
    try:
        import triton  # noqa: F401
    except ImportError:
        sys.exit("python -m dsa.bench.gpu_ops needs the `triton` package "
                 "(pip install 'dsa-runtime[cuda]' or '[rocm]').")
    return torch


class Inputs:
    """Random inputs of each op at given sizes, on the GPU (fp8 quantised the way the model does)."""

    def __init__(self, torch, seed: int = 0):
        self.torch = torch
        self.g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(self, *shape, dtype=None, scale: float = 1.0):
        t = self.torch.randn(*shape, generator=self.g, device="cuda") * scale
        return t.to(dtype) if dtype is not None else t

    def quant_rows(self, x, block: int):
        from dsa.hal.fp8 import pow2_ceil

        torch = self.torch
        lead, K = x.shape[:-1], x.shape[-1]
        xb = x.float().reshape(*lead, K // block, block)
        s = pow2_ceil(xb.abs().amax(-1).clamp_min(1e-4) / 448)
        q = (xb / s[..., None]).clamp(-448, 448).reshape(*lead, K).to(torch.float8_e4m3fn)
        return q, s

    def fp8_weight(self, *lead_n_k, scale: float):
        *lead, N, K = lead_n_k
        w = self.randn(*lead, N, K, dtype=self.torch.float8_e4m3fn)  # values in the fp8 range already
        s = self.torch.rand(*lead, cdiv(N, 128), cdiv(K, 128), generator=self.g, device="cuda") * scale + scale / 2
        return w, s

    def selection(self, rows: int, context: int, topk: int, offsets=None):
        """[rows, topk] int32 distinct positions in [0, context) (+ per-row offset); -1 where context < topk."""
        torch = self.torch
        k = min(topk, context)
        idx = torch.rand(rows, context, generator=self.g, device="cuda").topk(k, dim=1).indices
        if offsets is not None:
            idx = idx + offsets[:, None]
        out = torch.full((rows, topk), -1, dtype=torch.int32, device="cuda")
        out[:, :k] = idx.to(torch.int32)
        return out

    def sparse_prefill(self, tokens: int, context: int):
        q = self.randn(tokens, HEADS, D_QK, dtype=self.torch.bfloat16)
        kv = self.randn(context, 1, D_QK, dtype=self.torch.bfloat16)
        return (q, kv, self.selection(tokens, context, TOPK), D_QK**-0.5, D_V)

    def sparse_decode(self, batch: int, context: int, cache: str, page: int = 64):
        torch = self.torch
        blocks_per_seq = cdiv(context, page)
        num_blocks = batch * blocks_per_seq
        if cache == "fp8":  # the 656-byte token layout: fp8 latent, 4 pow2 fp32 scales, bf16 rope
            c = torch.randint(0, 0x7E, (num_blocks, page, 1, D_V), generator=self.g, device="cuda", dtype=torch.uint8)
            c |= torch.randint(0, 2, c.shape, generator=self.g, device="cuda", dtype=torch.uint8) << 7
            sc = torch.full((num_blocks, page, 1, D_V // 128), 2.0**-6, device="cuda")
            rope = self.randn(num_blocks, page, 1, ROPE, dtype=torch.bfloat16)
            kv = torch.cat([c, sc.view(torch.uint8), rope.view(torch.uint8)], dim=-1)
        else:
            kv = self.randn(num_blocks, page, 1, D_QK, dtype=torch.bfloat16)
        table = torch.randperm(num_blocks, generator=self.g, device="cuda").to(torch.int32).view(batch, blocks_per_seq)
        seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
        q = self.randn(batch, 1, HEADS, D_QK, dtype=torch.bfloat16)
        idx = self.selection(batch, context, TOPK).view(batch, 1, TOPK)
        return (q, kv, table, seq_lens, idx, D_QK**-0.5, D_V)

    def indexer(self, queries: int, keys: int, starts, ends, max_visible: int):
        q8, q_scale = self.quant_rows(self.randn(queries, INDEX_HEADS, INDEX_DIM), INDEX_DIM)
        k8, k_scale = self.quant_rows(self.randn(keys, INDEX_DIM), INDEX_DIM)
        w = self.randn(queries, INDEX_HEADS) * INDEX_HEADS**-0.5 * INDEX_DIM**-0.5 * q_scale[..., 0]
        return (q8, w, k8, k_scale[:, 0].contiguous(), starts, ends, TOPK, max_visible)

    def indexer_decode(self, batch: int, context: int):
        torch = self.torch
        starts = torch.arange(batch, device="cuda", dtype=torch.int32) * context
        return self.indexer(batch, batch * context, starts, starts + context, context)

    def indexer_prefill(self, tokens: int, context: int):
        torch = self.torch
        ends = torch.arange(context - tokens + 1, context + 1, device="cuda", dtype=torch.int32)
        return self.indexer(tokens, context, torch.zeros_like(ends), ends, context)

    def grouped(self, rows: int, n: int, k: int, fp8: bool, pad: int = 0):
        torch = self.torch
        route = torch.randint(0, EXPERTS, (rows,), generator=self.g, device="cuda")
        m_sizes = torch.bincount(route, minlength=EXPERTS).to(torch.int32)
        x = self.randn(rows + pad, k, dtype=torch.bfloat16)
        if fp8:
            xq, xs = self.quant_rows(x, 128)
            w, ws = self.fp8_weight(EXPERTS, n, k, scale=k**-0.5)  # outputs O(1)
            return (xq, xs, w, ws, m_sizes)
        return (x, None, self.randn(EXPERTS, n, k, dtype=torch.bfloat16, scale=k**-0.5), None, m_sizes)


# ---------------------------------------------------------------- checks (triton vs torch)


def _close(torch, a, e, name: str) -> str:
    a, e = a.double(), e.double()
    if not torch.equal(torch.isfinite(a), torch.isfinite(e)):
        return f"FAIL {name}: inf/nan positions differ"
    fa, fe = a[torch.isfinite(e)], e[torch.isfinite(e)]
    d = (fa - fe).abs()
    bad = int(((d > 1e-2) & (d > 2 / 128 * fe.abs())).sum())
    denom = float((fa * fa).sum() + (fe * fe).sum()) or 1.0
    gdiff = 1 - 2 * float((fa * fe).sum()) / denom
    ok = bad == 0 and gdiff <= 5e-6
    return (f"{'ok  ' if ok else 'FAIL'} {name}: max |d| {float(d.max()) if d.numel() else 0:.2e}, "
            f"global diff {gdiff:.1e}, {bad} outside tol")


def _topk_check(torch, idx, args) -> str:
    """Tie-aware: every triton pick scores >= every visible key it left out (torch provider's scores)."""
    from dsa.backends.torch.indexer import scores

    q, w, k, ks, starts, ends, topk, _ = args
    sc = scores(q, w, k.float(), ks, starts, ends)  # [T, S]
    picked = torch.zeros_like(sc, dtype=torch.bool)
    valid = idx >= 0
    picked[valid.nonzero()[:, 0], idx[valid].long()] = True
    count_ok = torch.equal(valid.sum(1), (ends - starts).long().clamp(0, topk))
    count_ok &= torch.equal(picked.sum(1), valid.sum(1))  # distinct picks
    low = torch.where(picked, sc, torch.full_like(sc, float("inf"))).amin(1)
    high = torch.where(~picked & torch.isfinite(sc), sc, torch.full_like(sc, float("-inf"))).amax(1)
    tol = 1e-5 * torch.maximum(high.abs(), torch.ones_like(high))
    ok = count_ok and bool((low >= high - tol).all())
    return (f"{'ok  ' if ok else 'FAIL'} indexer_topk: counts {'match' if count_ok else 'DIFFER'}, "
            f"worst margin {float((low - high).min()):.2e}")


def run_checks(torch, only: str) -> bool:
    from dsa.hal import registry

    inp = Inputs(torch, seed=1)
    cases = [
        ("act_quant", (inp.randn(333, HIDDEN, dtype=torch.bfloat16), 128, True)),
        ("fp8_linear", (inp.randn(77, HIDDEN, dtype=torch.bfloat16),
                        *inp.fp8_weight(1536, HIDDEN, scale=HIDDEN**-0.5), True)),
        ("grouped_gemm", inp.grouped(1000, MOE_INTER, HIDDEN, fp8=True, pad=5)),
        ("grouped_gemm", inp.grouped(1000, HIDDEN, MOE_INTER, fp8=False)),
        ("indexer_topk", inp.indexer_decode(4, 8192)),
        ("indexer_topk", inp.indexer_prefill(512, 4096)),
        ("sparse_mla_prefill", inp.sparse_prefill(256, 8192)),
        ("sparse_mla_decode", inp.sparse_decode(4, 8192, "bf16")),
        ("sparse_mla_decode", inp.sparse_decode(4, 8192, "fp8")),
    ]
    all_ok = True
    for op, args in cases:
        if only not in op:
            continue
        tri, ref = registry.get(op, "triton"), registry.get(op, "torch")
        reason = tri.supports_args(*args)
        if reason:
            print(f"FAIL {op}: the triton provider declines these arguments: {reason}")
            all_ok = False
            continue
        a, e = tri.fn(*args), ref.fn(*args)
        if op == "act_quant":
            same = torch.equal(a[1], e[1]) and torch.equal(a[0].float(), e[0].float())
            lines = [f"{'ok  ' if same else 'FAIL'} act_quant: values and scales {'identical' if same else 'DIFFER'}"]
        elif op == "indexer_topk":
            lines = [_topk_check(torch, a, args)]
        elif isinstance(a, tuple):
            lines = [_close(torch, a[0], e[0], f"{op} out"), _close(torch, a[1], e[1], f"{op} lse")]
        else:
            lines = [_close(torch, a, e, op)]
        for line in lines:
            print(line)
            all_ok &= line.startswith("ok")
        del a, e
    return all_ok


# ---------------------------------------------------------------- timing


@dataclass
class Case:
    op: str
    label: str
    make: Callable[[], tuple]
    cost: Callable[[tuple], Cost]
    fn: Optional[Callable] = None  # a baseline outside the HAL (no provider): timed as is
    key: Optional[tuple] = None  # (what, context) of the decode rows ratio_lines compares


def dense_decode_inputs(torch, inp, batch: int, context: int) -> tuple:
    """q [B, H, 1, 576] and the whole latent cache [B, 1, ctx, 576] (bf16): MLA's absorbed form as one shared
    key / value head; the value is the first 512 dims."""
    q = inp.randn(batch, HEADS, 1, D_QK, dtype=torch.bfloat16)
    kv = inp.randn(batch, 1, context, D_QK, dtype=torch.bfloat16)
    return q, kv


def dense_decode(q, kv):
    """The dense baseline: torch's scaled_dot_product_attention over every cached token."""
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, kv, kv[..., :D_V], scale=D_QK**-0.5, enable_gqa=True)


def timing_cases(torch, inp: Inputs) -> list[Case]:
    cases = []
    for ctx in CONTEXTS:
        for cache in ("bf16", "fp8"):
            cases.append(Case("sparse_mla_decode", f"B{DECODE_BATCH} ctx {ctx // 1024}K {cache} cache",
                              lambda c=ctx, k=cache: inp.sparse_decode(DECODE_BATCH, c, k),
                              lambda a, c=ctx, k=cache: sparse_mla_decode_cost(DECODE_BATCH, c, k),
                              key=(f"sparse_{cache}", ctx)))
    for ctx in CONTEXTS:  # the dense baseline the sparse decode and the indexer are compared with
        cases.append(Case("dense_attention", f"SDPA B{DECODE_BATCH} ctx {ctx // 1024}K bf16, all tokens",
                          lambda c=ctx: dense_decode_inputs(torch, inp, DECODE_BATCH, c),
                          lambda a, c=ctx: dense_decode_cost(DECODE_BATCH, c), fn=dense_decode,
                          key=("dense", ctx)))
    for ctx in CONTEXTS:
        cases.append(Case("sparse_mla_prefill", f"T{PREFILL_CHUNK} ctx {ctx // 1024}K",
                          lambda c=ctx: inp.sparse_prefill(PREFILL_CHUNK, c),
                          lambda a, c=ctx: sparse_mla_prefill_cost(PREFILL_CHUNK, c)))
    for ctx in CONTEXTS:
        cases.append(Case("indexer_topk", f"decode B{DECODE_BATCH} ctx {ctx // 1024}K",
                          lambda c=ctx: inp.indexer_decode(DECODE_BATCH, c),
                          lambda a, c=ctx: indexer_cost(DECODE_BATCH, DECODE_BATCH * c, DECODE_BATCH * c),
                          key=("indexer", ctx)))
        cases.append(Case("indexer_topk", f"prefill T{PREFILL_CHUNK} ctx {ctx // 1024}K",
                          lambda c=ctx: inp.indexer_prefill(PREFILL_CHUNK, c),
                          lambda a, c=ctx: indexer_cost(PREFILL_CHUNK, c, causal_pairs(PREFILL_CHUNK, c))))
    moe = [("decode", DECODE_BATCH * EXPERTS_PER_TOKEN), ("prefill", PREFILL_CHUNK * EXPERTS_PER_TOKEN)]
    for phase, rows in moe:
        for n, k, what in ((MOE_INTER, HIDDEN, "up"), (HIDDEN, MOE_INTER, "down")):
            cases.append(Case("grouped_gemm", f"fp8 {phase} {what} M{rows} {n}x{k}",
                              lambda r=rows, n=n, k=k: inp.grouped(r, n, k, fp8=True),
                              lambda a, n=n, k=k: grouped_gemm_cost(a[0].shape[0], n, k, int((a[4] > 0).sum()), True)))
    rows = PREFILL_CHUNK * EXPERTS_PER_TOKEN
    cases.append(Case("grouped_gemm", f"bf16 prefill down M{rows} {HIDDEN}x{MOE_INTER}",
                      lambda: inp.grouped(rows, HIDDEN, MOE_INTER, fp8=False),
                      lambda a: grouped_gemm_cost(a[0].shape[0], HIDDEN, MOE_INTER, int((a[4] > 0).sum()), False)))
    for rows in (DECODE_BATCH, PREFILL_CHUNK):
        cases.append(Case("act_quant", f"bf16 [{rows}, {HIDDEN}] ue8m0",
                          lambda r=rows: (inp.randn(r, HIDDEN, dtype=torch.bfloat16), 128, True),
                          lambda a, r=rows: act_quant_cost(r, HIDDEN)))
    for rows, n, k, what in ((DECODE_BATCH, 1536, HIDDEN, "q_a_proj"), (PREFILL_CHUNK, HIDDEN, 16384, "o_proj")):
        cases.append(Case("fp8_linear", f"{what} [{rows}, {k}] -> {n}",
                          lambda r=rows, n=n, k=k: (inp.randn(r, k, dtype=torch.bfloat16),
                                                    *inp.fp8_weight(n, k, scale=k**-0.5), True),
                          lambda a, r=rows, n=n, k=k: fp8_linear_cost(r, n, k)))
    return cases


def ratio_lines(times: dict[tuple, float], floors: dict[tuple, float]) -> list[str]:
    """The decode comparison the targets name, per context: dense attention (SDPA over every token) vs the
    indexer + top-k and vs indexer + sparse MLA, from the timed rows (times / roofline floors in ms by
    Case.key). A row that was not timed shows as '-'."""
    def ms(key):
        return f"{times[key]:8.3f}" if key in times else f"{'-':>8}"

    def ratio(a, b):
        return f"{times[a] / times[b]:7.1f}x" if a in times and b in times else f"{'-':>8}"

    out = [f"{'ctx':>5} {'dense ms':>8} {'indexer':>8} {'dense/idx':>9} {'sparse bf16':>11} {'% roof':>6} "
           f"{'sparse fp8':>10} {'% roof':>6} {'dense/(idx+bf16)':>16}"]
    for ctx in sorted({c for _, c in times}):
        d, i, sb, sf = ("dense", ctx), ("indexer", ctx), ("sparse_bf16", ctx), ("sparse_fp8", ctx)
        pct = {k: (f"{100 * floors[k] / times[k]:5.0f}%" if k in times and k in floors else f"{'-':>6}")
               for k in (sb, sf)}
        both = (f"{times[d] / (times[i] + times[sb]):15.1f}x" if all(k in times for k in (d, i, sb))
                else f"{'-':>16}")
        out.append(f"{ctx // 1024:4}K {ms(d)} {ms(i)} {ratio(d, i):>9} {ms(sb):>11} {pct[sb]} {ms(sf):>10} "
                   f"{pct[sf]} {both}")
    return out


def _time_ms(fn, args) -> float:
    import triton.testing

    return float(triton.testing.do_bench(lambda: fn(*args), warmup=10, rep=50, return_mode="median"))


def run_timing(torch, only: str, peak: Optional[Peak], budget_s: float) -> None:
    from dsa.hal import registry

    inp = Inputs(torch, seed=2)
    head = (f"{'op':18} {'case':34} {'ms':>8} {'TFLOP/s':>8} {'GB/s':>7} {'floor ms':>9} {'% floor':>7}  "
            "torch / vendors (ms)")
    print(head)
    print("-" * len(head))
    t_start = time.time()
    absent: dict[str, str] = {}  # vendor -> why it has no column (first reason seen)
    times: dict[tuple, float] = {}  # Case.key -> ms (the decode rows ratio_lines compares)
    floors: dict[tuple, float] = {}
    for case in timing_cases(torch, inp):
        if only not in case.op:
            continue
        if time.time() - t_start > budget_s:
            print(f"{case.op:18} {case.label:34} skipped: the {budget_s:.0f} s time budget is spent")
            continue
        try:
            args = case.make()
        except torch.cuda.OutOfMemoryError:
            print(f"{case.op:18} {case.label:34} skipped: inputs do not fit in GPU memory")
            continue
        if case.fn is not None:  # a baseline (dense attention): no provider, no vendor columns
            try:
                ms = _time_ms(case.fn, args)
            except Exception as err:  # e.g. out of memory at 128K: the table goes on
                print(f"{case.op:18} {case.label:34} failed: {type(err).__name__}: {str(err)[:80]}")
                del args
                torch.cuda.empty_cache()
                continue
            tflops, gbs = case.cost(args).achieved(ms / 1e3)
            print(f"{case.op:18} {case.label:34} {ms:8.3f} {tflops:8.1f} {gbs:7.0f}  (baseline)")
            if case.key:
                times[case.key] = ms
            del args
            torch.cuda.empty_cache()
            continue
        tri = registry.get(case.op, "triton")
        reason = tri.supports_args(*args)
        if reason:
            print(f"{case.op:18} {case.label:34} triton declines: {reason}")
            continue
        ms = _time_ms(tri.fn, args)
        cost = case.cost(args)
        tflops, gbs = cost.achieved(ms / 1e3)
        if case.key:
            times[case.key] = ms
        if peak is not None:
            floor = cost.floor_seconds(peak) * 1e3
            floor_txt = f"{floor:9.3f} {100 * floor / ms:6.0f}%"
            if case.key:
                floors[case.key] = floor
        else:
            floor_txt = f"{'n/a':>9} {'':>7}"
        vendors = []
        for name in COMPARED:
            prov = registry.providers(case.op).get(name)
            try:
                if prov is None:  # this vendor does not offer the op
                    continue
                why = prov.supports_args(*args)
                if why is not None:  # not importable here, or declines these shapes
                    absent.setdefault(name, f"{case.op}: {why}")
                    continue
                vendors.append(f"{name} {_time_ms(prov.fn, args):.3f}")
            except Exception as err:  # a vendor failing must not stop the table
                vendors.append(f"{name} failed ({type(err).__name__})")
        print(f"{case.op:18} {case.label:34} {ms:8.3f} {tflops:8.1f} {gbs:7.0f} {floor_txt}  "
              f"{', '.join(vendors) or '-'}")
        del args
        torch.cuda.empty_cache()
    for name, why in absent.items():
        print(f"  {name} missing from some rows, e.g. {why}")
    print(f"\n== decode B{DECODE_BATCH}: dense attention vs the indexer and the sparse MLA (targets at 64K: "
          "dense/idx >= 8x, sparse decode >= 50% of its roofline floor)")
    print("\n".join(ratio_lines(times, floors)))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="only ops whose name contains this")
    parser.add_argument("--peak", default="",
                        help="TFLOP/s bf16,TFLOP/s fp8,TB/s of this card (default: PEAKS by name)")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds the timing table may take (default 240)")
    args = parser.parse_args(argv)

    torch = _gpu_or_exit()
    name = torch.cuda.get_device_name()
    peak = next((p for key, p in PEAKS.items() if key in name), None)
    if args.peak:
        bf16, fp8, tbs = (float(v) for v in args.peak.split(","))
        peak = Peak(name, bf16 * 1e12, fp8 * 1e12, tbs * 1e12)
    import triton

    print(f"{name}; torch {torch.__version__}, triton {triton.__version__}; {time.strftime('%Y-%m-%d')}")
    print(f"roofline: {peak.bf16_flops / 1e12:.0f} TFLOP/s bf16, {peak.fp8_flops / 1e12:.0f} fp8, "
          f"{peak.bytes_per_s / 1e12:.1f} TB/s" if peak else "roofline: unknown card (pass --peak) - floors not shown")
    t0 = time.time()
    ok = True
    if not args.skip_checks:
        print("\n== checks: triton vs torch provider, fresh random inputs")
        ok = run_checks(torch, args.only)
    print("\n== timing: median of triton.testing.do_bench")
    run_timing(torch, args.only, peak, args.budget)
    print(f"\n{'all checks passed' if ok else 'SOME CHECKS FAILED'}; {time.time() - t0:.0f} s in all")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
