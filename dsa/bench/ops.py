"""Op scaling: one attention layer at the 671B shapes, DeepSeek Sparse Attention against dense MLA.

Shapes (docs/model-and-ops.md 1): 128 query heads of 576 (= 512 latent + 64 rope) over a shared 576-wide latent cache,
value 512; the lightning indexer's 64 heads x 128 (fp8 q and keys, one fp32 scale per key); top-k 2048.
The latent cache is paged (64-token pages, scattered block ids) in bf16, as on the serving path.

  decode  one new token over S cached tokens:
            sparse = indexer_topk (scores all S keys, keeps 2048) + sparse_mla_decode (reads those 2048)
            dense  = dsa.bench.dense_mla.dense_mla_decode over all S tokens
  prefill T tokens of one sequence (causal):
            sparse = indexer_topk + sparse_mla_prefill;  dense = causal dense attention
          timed on R query rows (blocks of 8 consecutive positions, centred at evenly spaced points) and
          scaled by T / R: a row's cost depends on its position only, so this estimates the full prefill
          (exact when R = T) without spending minutes per case on a CPU.

Each (provider, size) case runs its variants interleaved (dsa.bench.common.interleaved); peak memory is
measured in a separate, untimed call of each variant (dsa.bench.common.peak_bytes).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from dsa.bench.common import interleaved, median, peak_bytes, ratio
from dsa.bench.dense_mla import dense_mla_decode, dense_mla_prefill

OPS = ("indexer_topk", "sparse_mla_decode", "sparse_mla_prefill")
PAGE = 64
ROW_BLOCK = 8  # prefill rows are timed in blocks of this many consecutive positions


@dataclasses.dataclass(frozen=True)
class Shapes:
    heads: int = 128
    latent: int = 512  # kv_lora_rank = d_v
    rope: int = 64
    index_heads: int = 64
    index_dim: int = 128
    topk: int = 2048
    sm_scale: float = 0.1352338  # docs/model-and-ops.md 2.1: 192^-0.5 * mscale^2

    @property
    def dqk(self) -> int:
        return self.latent + self.rope

    @classmethod
    def from_config(cls, config) -> "Shapes":
        return cls(config.num_attention_heads, config.kv_lora_rank, config.qk_rope_head_dim, config.index_n_heads,
                   config.index_head_dim, config.index_topk, config.softmax_scale)


def shapes_671b() -> Shapes:
    from dsa.configs import CONFIG_DIR
    from dsa.model.config import ModelConfig

    return Shapes.from_config(ModelConfig.from_file(CONFIG_DIR / "models" / "deepseek-v3.2-exp" / "config.json"))


# ---- providers ----------------------------------------------------------------------------------------


def provider_status(device: torch.device) -> list[dict]:
    """Every provider known or registered for the ops benchmarked here: usable, or skipped with the reason."""
    from dsa.hal import registry
    from dsa.planning.hardware import detect

    registry.load_backends()
    hw = detect()
    target = registry.Target(platform=hw.platform, arch=hw.arch, fp8_format="e4m3fn", kv_cache_dtype="bf16",
                             page_size=PAGE, num_heads=128, index_n_heads=64)
    names = list(registry.KNOWN_PROVIDERS)
    for op in OPS:
        names += [n for n in registry.providers(op) if n not in names]
    status = []
    for name in names:
        reason = None
        elsewhere = any(name in registry.providers(op) for op in registry.OPS)
        for op in OPS:
            p = registry.providers(op).get(name)
            if p is None:
                reason = (f"does not provide {op}" if elsewhere else
                          f"not installed (backend {registry.KNOWN_PROVIDERS.get(name, name)} not importable here)")
                break
            try:
                why = p.supported(target)
            except Exception as err:  # a broken provider is reported, not fatal
                why = f"supported() raised {type(err).__name__}: {err}"
            if why:
                reason = f"{op}: {why}"
                break
        status.append({"provider": name, "usable": reason is None, "reason": reason})
    return status


def _call(op: str, provider: str, *args):
    from dsa.hal import HAL_OPS

    return HAL_OPS[op](*args, provider)


# ---- inputs -------------------------------------------------------------------------------------------


def _fp8_rows(n: int, dim: int, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """n random vectors quantised like the indexer's: fp8 [n, dim] and one power-of-two scale [n]."""
    from dsa.backends.torch.quant import act_quant

    x = torch.randn(n, dim, generator=gen)
    q, s = act_quant(x, dim, True)
    return q.to(device), s.squeeze(-1).to(device)


class DecodeCase:
    """One sequence with S cached tokens in a paged bf16 latent cache (+ its index keys), one new token."""

    def __init__(self, sh: Shapes, S: int, device, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.sh, self.S = sh, S
        n_blocks = -(-S // PAGE)
        self.cache = (torch.randn(n_blocks, PAGE, 1, sh.dqk, generator=g) * 0.5).to(torch.bfloat16).to(device)
        # scattered pages
        self.block_table = torch.randperm(n_blocks, generator=g).to(torch.int32).unsqueeze(0).to(device)
        self.seq_lens = torch.tensor([S], dtype=torch.int32, device=device)
        self.keys, self.key_scales = _fp8_rows(S, sh.index_dim, g, device)
        qi, qs = _fp8_rows(sh.index_heads, sh.index_dim, g, device)
        self.q_index = qi.unsqueeze(0)  # [1, Hi, Di]
        self.weights = (torch.randn(1, sh.index_heads, generator=g) * qs.cpu()).to(device)  # q scale folded in
        self.starts = torch.zeros(1, dtype=torch.int32, device=device)
        self.ends = torch.full((1,), S, dtype=torch.int32, device=device)
        self.q = (torch.randn(1, 1, sh.heads, sh.dqk, generator=g) * 0.5).to(torch.bfloat16).to(device)

    def sparse(self, provider: str):
        import time

        from dsa.bench.common import sync

        t0 = time.perf_counter()
        idx = _call("indexer_topk", provider, self.q_index, self.weights, self.keys, self.key_scales, self.starts,
                    self.ends, self.sh.topk, self.S)  # [1, K] positions (one sequence: packed rows = positions)
        sync(self.q.device)
        t1 = time.perf_counter()
        _call("sparse_mla_decode", provider, self.q, self.cache, self.block_table, self.seq_lens, idx.unsqueeze(0),
              self.sh.sm_scale, self.sh.latent)
        sync(self.q.device)
        return {"indexer": t1 - t0, "attention": time.perf_counter() - t1}

    def dense(self):
        return dense_mla_decode(self.q, self.cache, self.block_table, self.seq_lens, self.sh.sm_scale, self.sh.latent)


def sample_positions(T: int, rows: int, block: int = ROW_BLOCK) -> list[int]:
    """About `rows` query positions of a T-token prefill: blocks of `block` consecutive positions centred
    at (i + 1/2) T / blocks. Consecutive rows batch the way they do in a real prefill (chunks of rows
    that differ by one key), so the timed rows cost what those rows cost inside the full prefill."""
    if rows >= T:
        return list(range(T))
    block = max(1, min(block, rows))
    n = max(1, rows // block)
    out: set[int] = set()
    for i in range(n):
        start = min(max(0, int((i + 0.5) * T / n) - block // 2), T - block)
        out.update(range(start, start + block))
    return sorted(out)


class PrefillCase:
    """T tokens of one sequence; R query rows sampled over the positions stand for all T (module doc)."""

    def __init__(self, sh: Shapes, T: int, rows: int, device, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.sh, self.T = sh, T
        self.positions = sample_positions(T, max(1, rows))
        R = len(self.positions)
        self.kv = (torch.randn(T, 1, sh.dqk, generator=g) * 0.5).to(torch.bfloat16).to(device)
        self.keys, self.key_scales = _fp8_rows(T, sh.index_dim, g, device)
        qi, qs = _fp8_rows(R * sh.index_heads, sh.index_dim, g, device)
        self.q_index = qi.view(R, sh.index_heads, sh.index_dim)
        self.weights = (torch.randn(R, sh.index_heads, generator=g) * qs.view(R, -1).cpu()).to(device)
        self.starts = torch.zeros(R, dtype=torch.int32, device=device)
        self.ends = torch.tensor([p + 1 for p in self.positions], dtype=torch.int32, device=device)
        self.q = (torch.randn(R, sh.heads, sh.dqk, generator=g) * 0.5).to(torch.bfloat16).to(device)

    @property
    def scale(self) -> float:
        """Factor from the timed rows to the whole prefill."""
        return self.T / len(self.positions)

    def sparse(self, provider: str):
        import time

        from dsa.bench.common import sync

        t0 = time.perf_counter()
        idx = _call("indexer_topk", provider, self.q_index, self.weights, self.keys, self.key_scales, self.starts,
                    self.ends, self.sh.topk, self.T)
        sync(self.q.device)
        t1 = time.perf_counter()
        _call("sparse_mla_prefill", provider, self.q, self.kv, idx, self.sh.sm_scale, self.sh.latent)
        sync(self.q.device)
        return {"indexer": t1 - t0, "attention": time.perf_counter() - t1}

    def dense(self):
        return dense_mla_prefill(self.q, self.kv, self.positions, self.sh.sm_scale, self.sh.latent)


# ---- the section ----------------------------------------------------------------------------------------


def _measure(case, provider: str, reps: int, device, scale: float = 1.0) -> dict:
    times = interleaved({"sparse": lambda: case.sparse(provider), "dense": case.dense}, reps=reps, device=device)
    sparse, dense = median(times["sparse"]) * scale, median(times["dense"]) * scale
    row = {
        "provider": provider,
        "sparse_s": sparse,
        "indexer_s": median(times["sparse.indexer"]) * scale,
        "attention_s": median(times["sparse.attention"]) * scale,
        "dense_s": dense,
        "sparse_over_dense": ratio(sparse, dense),
        "speedup": ratio(dense, sparse),
        "reps": reps,
    }
    row["sparse_peak_bytes"], method = peak_bytes(lambda: case.sparse(provider), device)
    row["dense_peak_bytes"], _ = peak_bytes(case.dense, device)
    row["memory_method"] = method
    return row


def run(decode_contexts: Sequence[int], prefill_tokens: Sequence[int], prefill_rows: int, reps: int,
        providers: Optional[Sequence[str]] = None, shapes: Optional[Shapes] = None, log=print) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sh = shapes or shapes_671b()
    status = provider_status(device)
    if providers:
        wanted = set(providers)
        for s in status:
            if s["provider"] not in wanted and s["usable"]:
                s["usable"], s["reason"] = False, "not requested (--providers)"
    decode, prefill = [], []
    for s in status:
        if not s["usable"]:
            continue
        name = s["provider"]
        try:
            for S in decode_contexts:
                case = DecodeCase(sh, S, device)
                row = {"context": S, **_measure(case, name, reps, device)}
                decode.append(row)
                log(f"  decode  {name:8s} S={S:6d}: sparse {row['sparse_s'] * 1e3:8.1f} ms  dense "
                    f"{row['dense_s'] * 1e3:8.1f} ms  dense/sparse {row['speedup']:.1f}x")
                del case
            for T in prefill_tokens:
                case = PrefillCase(sh, T, prefill_rows, device)
                row = {"tokens": T, "rows_timed": len(case.positions), **_measure(case, name, reps, device, case.scale)}
                prefill.append(row)
                log(f"  prefill {name:8s} T={T:6d} ({row['rows_timed']} rows): sparse {row['sparse_s']:.2f} s  "
                    f"dense {row['dense_s']:.2f} s  dense/sparse {row['speedup']:.1f}x")
                del case
        except Exception as err:  # a provider that fails at run time is reported and skipped
            s["usable"], s["reason"] = False, f"failed while benchmarking: {type(err).__name__}: {err}"
            decode = [r for r in decode if r["provider"] != name]
            prefill = [r for r in prefill if r["provider"] != name]
    return {
        "device": str(device),
        "shapes": dataclasses.asdict(sh),
        "page_size": PAGE,
        "kv_cache_dtype": "bf16",
        "providers": status,
        "decode": decode,
        "prefill": prefill,
    }
