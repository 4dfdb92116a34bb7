"""`dsa export onnx` and `dsa run --onnx DIR`: the export and the onnxruntime runner from the command line.

    dsa export onnx --out mini-onnx                 # the built-in model, fp32, opset 21
    dsa run --onnx mini-onnx --prompt "import os" --temperature 0

The export is written into a hidden sibling directory and renamed into place when complete, so an
interrupted or failed export leaves nothing half-written at --out. The runner streams the text like
`dsa run` and ends with the same statistics line (prompt and decode tokens/s, the stop reason).
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from dsa.errors import InputError

# EngineArgs fields `dsa export onnx` takes (the rest are serving options an exported graph has no use for)
EXPORT_FIELDS = ("model", "dtype", "kv_cache_dtype", "weights", "indexer_fp8", "max_seq_len", "weights_seed", "tp",
                 "ep", "dp_attention", "nodes")
# `dsa run` flags that describe the model or the engine: an export already fixed them
RUN_FIELDS_FIXED = ("model", "dtype", "kv_cache_dtype", "weights", "indexer_fp8", "max_seq_len", "page_size",
                    "weights_seed", "tp", "ep", "dp_attention", "nodes", "max_num_seqs", "max_num_batched_tokens",
                    "enable_prefix_caching", "enable_chunked_prefill", "num_blocks", "kv_cache_memory")


def require(*modules: str) -> None:
    """InputError naming the extra to install when an ONNX package is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        what = "dsa export onnx" if "onnxscript" in modules else "dsa run --onnx"
        raise InputError(f"{what} needs {', '.join(missing)}: pip install 'dsa-runtime[onnx]' (onnx, onnxruntime, "
                         "onnxscript)")


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def cmd_export(args) -> int:
    from dsa.engine.args import EngineArgs
    from dsa.onnx.export import MODEL_FILE, check_exportable, check_out_dir, export_setup

    require("onnx", "onnxscript", "onnxruntime")
    engine_args = EngineArgs.from_cli(args)
    setup = check_exportable(engine_args, args.opset)  # every refusal before any work
    out = args.out.expanduser()
    check_out_dir(out, args.overwrite)  # before any work; the export itself goes to a sibling
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    t0 = time.perf_counter()
    try:
        export_setup(setup, partial, opset=args.opset, overwrite=False, progress=None)
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    files = ", ".join(f"{p.name} {_size(p)}" for p in (out / MODEL_FILE, out / f"{MODEL_FILE}.data") if p.is_file())
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s: {files}; run it with `dsa run --onnx {out}`")
    return 0


def check_run_flags(args) -> None:
    """`dsa run --onnx`: refuse the flags an export already fixed, naming the way to change them."""
    given = [f for f in RUN_FIELDS_FIXED if getattr(args, f, None) is not None]
    if given:
        from dsa.engine.args import FLAGS

        flag = FLAGS[given[0]][0]
        raise InputError(f"{flag} does not apply to --onnx: the export fixed the model and its options; export "
                         f"again with it (dsa export onnx {flag} ...)")
    if args.device not in (None, "cpu"):
        raise InputError(f"--onnx runs on onnxruntime's CPU provider; drop --device {args.device} (or pass cpu)")
    for name, flag in (("nproc", "--nproc"), ("interactive", "--interactive")):
        if getattr(args, name, None):
            raise InputError(f"{flag} does not apply to --onnx (one process, one prompt); drop it")
    if getattr(args, "chat", None):
        raise InputError("--chat does not apply to --onnx (the prompt is sent as raw text); drop it")


def run_onnx(directory: Path, prompt: str, params, write: Callable[[str], None],
             threads: Optional[int] = None) -> int:
    """Generate from `prompt` with the export in `directory`, streaming through `write`; the stats line last."""
    from dsa.engine.engine import GenerationStats
    from dsa.io.model_source import prompt_ids
    from dsa.io.tokenizer import clean_text
    require("onnxruntime")
    from dsa.onnx.runner import OnnxModel, generate, load_tokenizer

    model = OnnxModel(directory, threads)
    tokenizer = load_tokenizer(directory)
    ids = prompt_ids(tokenizer, prompt, False)
    if len(ids) >= model.max_seq_len:
        raise InputError(f"the prompt has {len(ids)} tokens but the export holds {model.max_seq_len} positions; "
                         "shorten the prompt (or export with a larger --max-seq-len)")
    meta = model.meta
    print(f"[dsa] onnx export {directory} (model {meta.get('model')}, {meta.get('dtype')}, opset {meta.get('opset')}) "
          "on onnxruntime CPUExecutionProvider", file=sys.stderr, flush=True)
    stats = GenerationStats(prompt_tokens=len(ids))
    stream = tokenizer.stream_decoder()
    write(clean_text(prompt))
    t0 = time.perf_counter()
    last = t0
    for token in generate(model, ids, params=params, stats=stats):
        now = time.perf_counter()
        if stats.decode_tokens == 0:
            stats.prefill_seconds = now - t0
        else:
            stats.decode_steps += 1
            stats.decode_seconds += now - last
        last = now
        stats.decode_tokens += 1
        write(stream.push(token))
    write(stream.flush() + "\n")
    print(f"[{stats.summary()}]", flush=True)
    return 0


__all__ = ["cmd_export", "check_run_flags", "run_onnx", "require", "EXPORT_FIELDS"]
