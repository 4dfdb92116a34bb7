"""`export_onnx`: the DSA graph as one ONNX model in standard ops, with a dynamic token count.

    export_onnx(EngineArgs(model="mini", dtype="fp32"), "out/mini-onnx")

builds the model as every other command does (EngineArgs -> resolve() -> build_model()), wraps it in
`dsa.onnx.graph.OnnxGraph` (inputs input_ids, positions and the per-layer past rows; outputs logits and
the new rows: see that module for the contiguous cache and why) and exports it with torch.onnx's dynamo
exporter. Every HAL op is lowered by its translation (dsa.hal.onnx_graph.translation_table), plus the
aten ops torch.onnx lacks (dsa.onnx.aten_ops). The attention stays sparse: O(T x index_topk) per layer.

The directory holds model.onnx, its weights as external data (model.onnx.data), config.json, the
checkpoint's tokenizer / generation files when it has them, and onnx.json (what the runner needs: layer
count, row widths, dtype, context limit, eos). `onnx.checker.check_model` passes before it returns.

Refused with an InputError naming the option to change: a layout of more than one device (tp / ep / dp /
nodes > 1), a device profile that is not a host (--device cpu), the packed fp8 KV cache
(--kv-cache-dtype bf16), a compute dtype other than fp32 or fp16 (bf16: --dtype fp32; fp16 is checked
against fp32 in tests/onnx/test_fp16.py). The indexer's fp8 rounding and
fp8 weights (--weights fp8) are exported faithfully (Cast to FLOAT8E4M3FN and back, in the graph; each op
matches the torch provider, act_quant bit for bit: tests/onnx/test_hal_translations.py). At model level the
fp8 weights' activation rounding amplifies fp32 summation-order noise: an element that lands on an fp8
rounding boundary rounds the other way, and such a step's logits differ by up to ~0.3 on the tiny model
(the other steps ~1e-6), so greedy tokens may diverge there; --weights bf16 (the cpu profile's default)
dequantises the checkpoint instead and matches within 1e-4.
"""
from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Optional

import torch

from dsa.engine.args import FLAGS, EngineArgs
from dsa.errors import InputError, OutputDirError
from dsa.onnx.runner import FORMAT, META_FILE, MODEL_FILE

DEFAULT_OPSET = 21
MIN_OPSET = 19  # Cast to / from FLOAT8E4M3FN (dsa.hal.onnx_graph)
MAX_OPSET = 23
EXPORT_DTYPES = ("fp32", "fp16")  # bf16 MatMul / Gather are missing from onnxruntime's CPU provider
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json")
SAMPLE_TOKENS, SAMPLE_PAST = 3, 5  # the traced shapes (not 0 or 1, which torch.export would specialise)


def check_exportable(args: EngineArgs, opset: int = DEFAULT_OPSET):
    """Resolve `args` (fp32 unless --dtype says otherwise) and refuse what the export cannot take; returns the
    EngineSetup. Every refusal is an InputError naming the option to change."""
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"--opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}] (fp8 casts need {MIN_OPSET}), "
                         f"got {opset!r}")
    if args.dtype is None:
        args = args.replace(dtype="fp32")
    if args.dtype not in EXPORT_DTYPES:
        raise InputError(f"ONNX export computes in {', '.join(EXPORT_DTYPES)} (onnxruntime's CPU provider lacks "
                         f"{args.dtype} kernels for MatMul / Gather); pass --dtype fp32")
    several = {f"{_flag(name)}": n for name, n in args.layout_overrides.items() if n not in (None, 1)}
    if several:
        _refuse_layout(several)
    setup = args.resolve()
    plan, profile = setup.plan, setup.profile
    if profile.platform != "cpu":
        raise InputError(f"ONNX export runs on the host, but device profile {profile.name!r} is platform "
                         f"{profile.platform}; pass --device cpu (the exported graph runs anywhere onnxruntime does)")
    layout = plan.layout
    spread = {"--tp": layout.tp, "--ep": layout.ep, "--dp": layout.dp_attention, "--nodes": layout.nodes}
    several = {flag: n for flag, n in spread.items() if n != 1}
    if several or plan.world_size != 1:
        _refuse_layout(several or {"world size": plan.world_size})
    if plan.kv_cache_dtype != "bf16":
        raise InputError(f"the packed {plan.kv_cache_dtype} KV cache has no ONNX translation (the exported cache is "
                         "plain rows in the compute dtype); pass --kv-cache-dtype bf16")
    return setup


def _flag(name: str) -> str:
    return FLAGS[name][0]


def _refuse_layout(several: dict) -> None:
    given = ", ".join(f"{flag} {n}" for flag, n in several.items())
    raise InputError(f"ONNX export is one graph for a single device, but the layout asks for {given}; pass "
                     "--tp 1 --ep 1 --dp 1 --nodes 1 (or leave them out)")


def _sample_inputs(config, dtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (SAMPLE_TOKENS,), generator=g)
    positions = torch.arange(SAMPLE_PAST, SAMPLE_PAST + SAMPLE_TOKENS)
    past = []
    for _ in range(config.num_hidden_layers):
        past += [torch.randn(SAMPLE_PAST, config.latent_dim, generator=g, dtype=dtype),
                 torch.randn(SAMPLE_PAST, config.index_head_dim, generator=g, dtype=dtype)]
    return ids, positions, tuple(past)


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an --out the export must not replace: not a directory, not empty without `overwrite`, not an export
    of ours, or holding a file an export does not write (a user's file is never deleted)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"--out {out_dir} exists and is not a directory; choose another --out")
    if not (out_dir.is_dir() and any(out_dir.iterdir())):
        return
    if not overwrite:
        raise OutputDirError(f"--out {out_dir} is not empty; pass --overwrite to replace an export there, or choose "
                             "another --out")
    if not (out_dir / META_FILE).is_file():
        raise OutputDirError(f"--out {out_dir} is not an ONNX export of ours (no {META_FILE}); refusing to "
                             "overwrite it (remove it or choose another --out)")
    ours = {MODEL_FILE, f"{MODEL_FILE}.data", META_FILE, "config.json", *TOKENIZER_FILES}
    other = sorted(p.name for p in out_dir.iterdir() if p.name not in ours or not p.is_file() or p.is_symlink())
    if other:
        raise OutputDirError(f"--out {out_dir} holds {other[0]}, which an export does not write; refusing to "
                             "overwrite it (move it away or choose another --out)")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    check_out_dir(out_dir, overwrite)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def export_onnx(args: EngineArgs, out_dir: str | Path, *, opset: int = DEFAULT_OPSET, overwrite: bool = False,
                progress: Optional[bool] = False) -> Path:
    """Export the model `args` describes into `out_dir` (see the module docstring); returns out_dir."""
    import onnx  # noqa: F401  (a missing onnx / onnxscript fails before the checks, as it always has)
    import onnxscript  # noqa: F401

    return export_setup(check_exportable(args, opset), out_dir, opset=opset, overwrite=overwrite, progress=progress)


def export_setup(setup, out_dir: str | Path, *, opset: int = DEFAULT_OPSET, overwrite: bool = False,
                 progress: Optional[bool] = False) -> Path:
    """export_onnx after its checks: `setup` is what check_exportable(args, opset) returned, for the same opset."""
    import onnx

    from dsa.hal.onnx_graph import translation_table
    from dsa.onnx.aten_ops import aten_table
    from dsa.onnx.graph import OnnxGraph, input_names, output_names

    out_dir = Path(out_dir).expanduser()
    _prepare_out_dir(out_dir, overwrite)
    config, dtype = setup.config, setup.dtype
    graph = OnnxGraph(setup.build_model(progress=progress)).eval()
    L = config.num_hidden_layers
    tokens = torch.export.Dim("tokens", min=1, max=setup.max_seq_len)
    past = torch.export.Dim("past", min=0, max=setup.max_seq_len - 1)
    dynamic = ({0: tokens}, {0: tokens}, tuple({0: past} for _ in range(2 * L)))
    sample = _sample_inputs(config, dtype)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::..." per missing library
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.export's FutureWarnings about pytree internals
        program = torch.onnx.export(
            graph, (sample[0], sample[1], *sample[2]), dynamo=True, opset_version=opset, verbose=False,
            custom_translation_table={**translation_table(), **aten_table()},
            input_names=input_names(L), output_names=output_names(L), dynamic_shapes=dynamic,
        )
    quiet.setLevel(level)
    path = out_dir / MODEL_FILE
    program.save(str(path), external_data=True)
    onnx.checker.check_model(str(path), full_check=True)
    _write_side_files(setup, out_dir, opset, graph.model.fp8_weights)
    return out_dir


def _write_side_files(setup, out_dir: Path, opset: int, fp8_weights: bool) -> None:
    config, source = setup.config, setup.source
    if source.checkpoint_dir is not None:
        for name in TOKENIZER_FILES + ("config.json",):
            if (source.checkpoint_dir / name).is_file():
                shutil.copy2(source.checkpoint_dir / name, out_dir / name)
    eos = config.eos_token_id
    meta = {
        "format": FORMAT, "model": source.name, "opset": opset, "dtype": setup.args.dtype,
        "num_layers": config.num_hidden_layers, "latent_dim": config.latent_dim,
        "index_head_dim": config.index_head_dim, "vocab_size": config.vocab_size,
        "index_topk": config.index_topk, "max_seq_len": setup.max_seq_len,
        "eos_token_ids": [] if eos is None else [int(eos)],
        "indexer_fp8": setup.args.indexer_fp8, "fp8_weights": bool(fp8_weights),
        "tokenizer": "files" if (out_dir / "tokenizer.json").is_file() else "byte",
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
