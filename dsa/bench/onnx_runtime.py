"""The onnx section of `dsa bench`: onnxruntime over the exported graph (dsa export onnx) against our torch path,
the same model, dtype and thread count, interleaved per context.

Model: the tiny config with max_position_embeddings raised to the longest context (seeded random weights: the
speed does not depend on them), fp32 (the export's dtype), the indexer's fp8 rounding on. Torch path: the
shared model graph's forward over the paged cache, as the engine runs it (torch providers, bf16 latent cache).
ONNX: dsa.onnx.runner.OnnxModel.step over its contiguous row cache (fp32 rows), CPUExecutionProvider. Both
prefill the context in chunks of `chunk` tokens (the engine's max_num_batched_tokens, so no step holds a
[context x context] score block), then run `decodes` one-token steps after it. Reported: tok/s of each and
onnxruntime / torch, and the export's file sizes.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

PAGE = 64


def available() -> str | None:
    """None when onnx, onnxruntime and onnxscript import; else why the section is skipped."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(missing)} (pip install 'dsa-runtime[onnx]')" if missing else None


def _config(directory: Path, max_len: int) -> str:
    from dsa.configs import CONFIG_DIR

    raw = json.loads((CONFIG_DIR / "models" / "tiny" / "config.json").read_text())
    raw["max_position_embeddings"] = max_len
    path = directory / "config.json"
    path.write_text(json.dumps(raw))
    return str(path)


class _TorchPath:
    """The graph's forward over a paged cache holding one sequence."""

    def __init__(self, model, max_len: int):
        import torch

        from dsa.model.cache import PagedCache

        self.model, self.torch = model, torch
        pages = math.ceil(max_len / PAGE) + 1
        self.cache = PagedCache(model.config, num_blocks=pages, page_size=PAGE, kv_cache_dtype="bf16",
                                dtype=torch.float32, indexer_fp8=True)
        self.blocks = list(range(pages))
        self.length = 0

    def step(self, ids: list[int]) -> None:
        from dsa.model.cache import Batch

        batch = Batch.build(new_lens=[len(ids)], context_lens=[self.length], block_tables=[self.blocks],
                            page_size=PAGE)
        with self.torch.inference_mode():
            self.model(self.torch.tensor(ids), batch, self.cache)
        self.length += len(ids)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(contexts: list[int], chunk: int, decodes: int, threads: int, log: Callable[[str], None]) -> dict:
    import torch

    from dsa.engine.args import EngineArgs
    from dsa.onnx.export import export_onnx
    from dsa.onnx.runner import OnnxModel

    why = available()
    if why is not None:
        return {"skipped": why, "rows": []}
    max_len = max(contexts) + decodes + 1
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dsa-bench-onnx-") as tmp:
        tmp = Path(tmp)
        cfg = _config(tmp, max_len)
        args = EngineArgs(model=cfg, dtype="fp32", max_seq_len=max_len)
        t0 = time.perf_counter()
        export_onnx(args, tmp / "onnx")
        export_s = time.perf_counter() - t0
        sizes = {p.name: p.stat().st_size for p in (tmp / "onnx").iterdir() if p.name.startswith("model.onnx")}
        model = args.resolve().build_model(progress=False)
        onnx_model = OnnxModel(tmp / "onnx", threads)
        vocab = model.config.vocab_size
        for context in contexts:
            ids = torch.randint(2, vocab, (context + decodes,), generator=gen).tolist()
            chunks = [ids[i:min(i + chunk, context)] for i in range(0, context, chunk)]
            row = {"context": context, "chunk": chunk, "decodes": decodes}
            torch_path = _TorchPath(model, max_len)
            onnx_cache = onnx_model.new_cache()
            steps = {"torch": torch_path.step, "onnx": lambda t: onnx_model.step(t, onnx_cache)}
            prefill = {"torch": 0.0, "onnx": 0.0}
            for c in chunks:  # interleaved chunk by chunk: the machine's load falls on both alike
                for name in ("torch", "onnx"):
                    prefill[name] += _timed(lambda: steps[name](c))
            decode = {"torch": 0.0, "onnx": 0.0}
            for t in ids[context:context + decodes]:
                for name in ("torch", "onnx"):
                    decode[name] += _timed(lambda: steps[name]([t]))
            for name in ("torch", "onnx"):
                row[f"{name}_prefill_tps"] = context / prefill[name]
                row[f"{name}_decode_tps"] = decodes / decode[name]
            row["prefill_ratio"] = row["onnx_prefill_tps"] / row["torch_prefill_tps"]
            row["decode_ratio"] = row["onnx_decode_tps"] / row["torch_decode_tps"]
            log(f"[bench] onnx {context}: prefill torch {row['torch_prefill_tps']:.0f} / onnxruntime "
                f"{row['onnx_prefill_tps']:.0f} tok/s, decode {row['torch_decode_tps']:.1f} / "
                f"{row['onnx_decode_tps']:.1f} tok/s")
            rows.append(row)
    return {"model": "tiny config, max_position_embeddings " + str(max_len), "threads": threads,
            "export_seconds": export_s, "file_bytes": sizes, "rows": rows}


def render(section: dict) -> list[str]:
    from dsa.bench.common import md_table

    out = ["## 5. ONNX export: onnxruntime vs the torch path", ""]
    if section.get("skipped"):
        return out + [f"Skipped: {section['skipped']}.", ""]
    sizes = ", ".join(f"{name} {n / 2**20:.1f} MiB" for name, n in sorted(section["file_bytes"].items()))
    out += [f"`dsa export onnx` of the {section['model']} (fp32, indexer fp8 rounding on): {sizes}; exported in "
            f"{section['export_seconds']:.0f} s. Both paths on {section['threads']} thread(s), interleaved chunk by "
            "chunk and step by step; prefill in chunks of the engine's batch (one row cache / paged cache per path), "
            "then one-token decode steps after the context.", ""]
    rows = [[r["context"], f"{r['torch_prefill_tps']:.0f}", f"{r['onnx_prefill_tps']:.0f}",
             f"{r['prefill_ratio']:.2f}x", f"{r['torch_decode_tps']:.1f}", f"{r['onnx_decode_tps']:.1f}",
             f"{r['decode_ratio']:.2f}x"] for r in section["rows"]]
    out += [md_table(["context", "prefill tok/s torch", "prefill tok/s onnxruntime", "onnxruntime / torch",
                      "decode tok/s torch", "decode tok/s onnxruntime", "onnxruntime / torch"], rows), ""]
    return out


__all__ = ["run", "render", "available"]
