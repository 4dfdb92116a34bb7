"""TP, EP and DP-attention over gloo (CPU processes) give what one process gives, on the same tiny
checkpoint: logits of a full forward (fp32 model, tolerance) and greedy tokens (exact).

One spawn of 2 workers runs every 2-rank layout in turn (spawning costs seconds; the layouts cost
milliseconds). DP-attention ranks serve different prompts of different lengths, so the MoE gathers
unequal token counts and the shorter generation is kept in step by dummy forwards (Lockstep).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import rank_exit
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dsa.engine.engine import Engine
from dsa.engine.sampling import SamplingParams
from dsa.errors import ConfigError
from dsa.hal import OpSet
from dsa.io.checkpoint_loader import load_model
from dsa.io.checkpoint_writer import write_checkpoint
from dsa.model.cache import Batch, PagedCache
from dsa.model.parallel import NOT_HELD, ParallelGroups, check_layout, parallelize

REPO = Path(__file__).resolve().parents[2]
PAGE = 16
MAX_SEQ = 64
_g = torch.Generator().manual_seed(7)
PROMPTS = (torch.randint(2, 260, (20,), generator=_g).tolist(), torch.randint(2, 260, (13,), generator=_g).tolist())
NEW_TOKENS = (10, 4)  # per prompt: DP rank 1 finishes first and idles in step with rank 0
ATOL = RTOL = 1e-4  # fp32 model: only the order of the cross-rank sums differs

# name: (tp, dp_attention, ep, checkpoint, weights)
LAYOUTS_2 = {
    "tp2": (2, 1, 1, "bf16", "bf16"),  # attention, dense FFN, shared expert, vocab split; experts replicated
    "tp2-ep2": (2, 1, 2, "bf16", "bf16"),  # EP group == TP group: one fused all-reduce
    "dp2": (1, 2, 1, "bf16", "bf16"),  # DP-attention, experts replicated: no MoE traffic
    "dp2-ep2": (1, 2, 2, "bf16", "bf16"),  # DP-attention + EP: all-gather tokens, reduce-scatter back
    "tp2-fp8-dequant": (2, 1, 2, "fp8", "bf16"),  # fp8 checkpoint dequantised per slice at load
    "dp2-ep2-fp8": (1, 2, 2, "fp8", "fp8"),  # fp8 experts + block scales kept, split by expert
}
LAYOUTS_4 = {"tp2-dp2-ep4": (2, 2, 4, "bf16", "bf16")}  # EP spans DP groups with TP duplicates: all-reduce


def _load(ckpt: Path, weights: str, groups=None):
    return load_model(ckpt, OpSet.single("torch"), dtype=torch.float32, weights=weights, parallel=groups,
                      progress=False)


@torch.inference_mode()
def _logits(model, ids: list[int]) -> torch.Tensor:
    cache = PagedCache(model.config, num_blocks=2, page_size=PAGE, kv_cache_dtype="bf16", dtype=torch.float32)
    batch = Batch.build(new_lens=[len(ids)], context_lens=[0], block_tables=[[0, 1]], page_size=PAGE)
    return model(torch.tensor(ids), batch, cache)


def _greedy(model, prompt: int, groups=None) -> list[int]:
    from dsa.dist.lockstep import Lockstep

    step = Lockstep(model, groups, PAGE) if groups is not None and groups.dp_attention > 1 else model
    engine = Engine(step, model.config, page_size=PAGE, kv_cache_dtype="bf16", dtype=torch.float32,
                    max_seq_len=MAX_SEQ)
    tokens = list(engine.generate(PROMPTS[prompt], SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS[prompt])))
    if step is not model:
        step.drain()
    return tokens


def _worker(rank: int, world: int, port: int, ckpts: dict, out: Path, layouts: dict) -> None:
    rank_exit.start()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for name, (tp, dp, ep, ckpt, weights) in layouts.items():
            groups = ParallelGroups.create(tp, dp, ep)
            model = _load(ckpts[ckpt], weights, groups)
            prompt = groups.dp_rank % len(PROMPTS)  # DP groups serve different prompts
            results[name] = {"prompt": prompt, "logits": _logits(model, PROMPTS[prompt]),
                             "tokens": _greedy(model, prompt, groups)}
        try:
            ParallelGroups.create(world * 2, 1, 1)
        except ConfigError as err:
            results["error"] = str(err)
        torch.save(results, out / f"rank{rank}.pt")
    except BaseException:
        dist.destroy_process_group()
        raise
    rank_exit.finish()


def _free_port() -> int:
    from dsa.dist.launch import free_port

    return free_port()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("parallel")
    return {fmt: write_checkpoint("tiny", root / fmt, fp8=fmt == "fp8", seed=3, num_shards=3)
            for fmt in ("bf16", "fp8")}


@pytest.fixture(scope="module")
def reference(ckpts) -> dict:
    """One process: {(checkpoint, weights): [(logits, tokens) per prompt]}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        ref = {}
        for key in {(c, w) for *_, c, w in [*LAYOUTS_2.values(), *LAYOUTS_4.values()]}:
            model = _load(ckpts[key[0]], key[1])
            ref[key] = [(_logits(model, PROMPTS[p]), _greedy(model, p)) for p in range(len(PROMPTS))]
        return ref
    finally:
        torch.set_num_threads(threads)


def _run(world: int, layouts: dict, ckpts: dict, tmp_path: Path) -> list[dict]:
    mp.spawn(_worker, args=(world, _free_port(), ckpts, tmp_path, layouts), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def _check(results: list[dict], layouts: dict, reference: dict) -> None:
    for name, (tp, dp, ep, ckpt, weights) in layouts.items():
        for rank, res in enumerate(results):
            r = res[name]
            assert r["prompt"] == (rank // tp) % len(PROMPTS)
            logits, tokens = reference[(ckpt, weights)][r["prompt"]]
            torch.testing.assert_close(r["logits"], logits, atol=ATOL, rtol=RTOL,
                                       msg=lambda m: f"{name} rank {rank}: {m}")
            assert r["tokens"] == tokens, f"{name} rank {rank}: greedy tokens differ"
            assert len(tokens) > 1


def test_two_ranks_match_one_process(ckpts, reference, tmp_path):
    results = _run(2, LAYOUTS_2, ckpts, tmp_path)
    _check(results, LAYOUTS_2, reference)
    assert "launched" in results[0]["error"] and "4 ranks" in results[0]["error"]


@pytest.mark.skipif(os.environ.get("DSA_TEST_4_RANKS") != "1",
                    reason="4 processes: set DSA_TEST_4_RANKS=1 (~35 s of CPU)")
def test_four_ranks_match_one_process(ckpts, reference, tmp_path):
    _check(_run(4, LAYOUTS_4, ckpts, tmp_path), LAYOUTS_4, reference)


# ---- one process: layout errors, slicing, per-rank reads ---------------------------------------------

def test_impossible_layouts_are_clear_errors(ckpts):
    from dsa.model.config import ModelConfig

    config = ModelConfig.from_file(ckpts["bf16"] / "config.json")
    with pytest.raises(ConfigError, match="tp=3 does not divide num_attention_heads=4"):
        check_layout(config, tp=3, dp_attention=1, ep=1, fp8_weights=False)
    with pytest.raises(ConfigError, match="ep=3 does not divide the world size 2"):
        check_layout(config, tp=2, dp_attention=1, ep=3, fp8_weights=False)
    with pytest.raises(ConfigError, match="ep=16 does not divide n_routed_experts=8"):
        check_layout(config, tp=4, dp_attention=4, ep=16, fp8_weights=False)
    with pytest.raises(ConfigError, match="would split the 128x128 fp8 blocks of o_proj: 64 columns"):
        check_layout(config, tp=2, dp_attention=1, ep=1, fp8_weights=True)
    check_layout(config, tp=2, dp_attention=1, ep=1, fp8_weights=False)  # dequantised: any cut works


def test_fp8_block_split_fails_before_any_read(ckpts, monkeypatch):
    import safetensors

    def no_reads(*a, **k):
        raise AssertionError("a shard was opened")

    monkeypatch.setattr(safetensors, "safe_open", no_reads)
    with pytest.raises(ConfigError, match="fp8 blocks"):
        _load(ckpts["fp8"], "fp8", ParallelGroups(tp=2, dp_attention=1, ep=2, rank=1))


def test_each_rank_reads_only_its_parts(ckpts, monkeypatch):
    """EP rank 1 of 2, TP rank 1 of 2: no other expert is read; split tensors are read as slices."""
    import safetensors

    real, reads = safetensors.safe_open, []

    class Recording:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def get_tensor(self, name):
            reads.append((name, None))
            return self.f.get_tensor(name)

        def get_slice(self, name):
            reads.append((name, "slice"))
            return self.f.get_slice(name)

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    full = _load(ckpts["fp8"], "fp8")
    reads.clear()
    groups = ParallelGroups(tp=2, dp_attention=1, ep=2, rank=1)  # no process group: loading only
    part = _load(ckpts["fp8"], "bf16", groups)
    experts = [n for n, _ in reads if ".mlp.experts." in n]
    assert experts and all(4 <= int(n.split(".mlp.experts.")[1].split(".")[0]) < 8 for n in experts)
    assert ("model.layers.0.self_attn.o_proj.weight", "slice") in reads
    assert ("lm_head.weight", "slice") in reads
    attn, full_attn = part.model.layers[1].self_attn, full.model.layers[1].self_attn
    assert attn.n_heads == 2 and attn.o_proj.weight.shape == (128, 64)
    torch.testing.assert_close(attn.o_proj.weight, full_attn.o_proj.dense_weight(torch.float32)[:, 64:])
    torch.testing.assert_close(part.model.layers[1].mlp.experts.up_proj[0], _dequant_expert(full, 1, "up_proj", 4))


def _dequant_expert(model, layer: int, proj: str, e: int) -> torch.Tensor:
    from dsa.model.layers import dequantize_blocks

    ex = model.model.layers[layer].mlp.experts
    return dequantize_blocks(getattr(ex, proj)[e], getattr(ex, proj + "_scale_inv")[e])


def test_slicer_cuts_scales_on_block_boundaries(ckpts):
    with torch.device("meta"):
        from dsa.model.config import ModelConfig
        from dsa.model.transformer import DeepseekV32

        config = ModelConfig.from_file(ckpts["fp8"] / "config.json")
        model = DeepseekV32(config, OpSet.single("torch"), dtype=torch.bfloat16, fp8_weights=True)
    sharding = parallelize(model, ParallelGroups(tp=1, dp_attention=2, ep=2, rank=0))
    assert sharding.slicer("model.layers.1.mlp.experts.5.up_proj.weight", (64, 128)) is NOT_HELD
    assert sharding.slicer("model.layers.1.mlp.experts.3.up_proj.weight_scale_inv", (1, 1)) is None
    assert sharding.slicer("model.layers.0.self_attn.q_a_proj.weight", (64, 128)) is None
    with torch.device("meta"):
        model = DeepseekV32(config, OpSet.single("torch"), dtype=torch.bfloat16, fp8_weights=False)
    sharding = parallelize(model, ParallelGroups(tp=2, dp_attention=1, ep=1, rank=1))
    assert sharding.slicer("model.layers.0.self_attn.q_b_proj.weight", (256, 64)) == (slice(128, 256), slice(None))
    assert sharding.slicer("model.layers.0.self_attn.q_b_proj.weight_scale_inv", (2, 1)) == (slice(1, 2), slice(None))
    assert sharding.slicer("model.layers.0.self_attn.o_proj.weight", (128, 128)) == (slice(None), slice(64, 128))


# ---- the command line -----------------------------------------------------------------------------

def _cli(*argv: str, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if env.get(var) is None:
            env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "dsa.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)


RUN = ("run", "--device", "cpu", "--raw", "--temperature", "0", "--max-new-tokens", "6", "--prompt", "Hello")


def test_cli_nproc_matches_one_process(ckpts, capsys):
    """`dsa run --nproc 2` with DP-attention 2 + EP 2: rank 0 serves the prompt, rank 1 runs dummy
    forwards in step; the text equals a one-process run's and is printed once."""
    from dsa.cli import main

    assert main([*RUN, "--model", str(ckpts["bf16"])]) == 0
    one = capsys.readouterr().out.splitlines()[0]  # the stats line that follows differs (timings)
    two = _cli(*RUN, "--model", str(ckpts["bf16"]), "--dp", "2", "--nproc", "2")
    assert two.returncode == 0, two.stderr
    assert two.stdout.splitlines()[0] == one and one.startswith("Hello")
    assert two.stdout.count("Hello") == 1 and two.stderr.count("[dsa] model") == 1  # only rank 0 prints
    assert "over 2 ranks (tp 1, dp 2, ep 2)" in two.stderr


@pytest.mark.parametrize("flags, env, message", [
    (("--tp", "2"), {}, "needs 2 processes: add --nproc 2"),
    (("--tp", "2", "--nproc", "3"), {}, "--nproc 3 does not match the layout"),
    (("--tp", "2"), {"RANK": "0", "WORLD_SIZE": "4"}, "4 processes were launched but the layout"),
    (("--tp", "3", "--nproc", "3"), {}, "tp=3 does not divide num_attention_heads=4"),
])
def test_cli_layout_errors_before_loading(ckpts, flags, env, message, monkeypatch, capsys):
    import safetensors

    from dsa.cli import main

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: pytest.fail("a shard was opened"))
    assert main([*RUN, "--model", str(ckpts["bf16"]), *flags]) == 2
    assert message in capsys.readouterr().err
