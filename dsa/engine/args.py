"""EngineArgs: every user option of a model run, in one frozen, validated object.

`dsa run`, `dsa plan` and `LLM(...)` all build one (from CLI flags or keyword arguments) and reach a plan
and an engine only through it:

    args = EngineArgs(model="path/to/DeepSeek-V3.2-Exp", device="h200", max_seq_len=32768)
    setup = args.resolve()            # profile + model source + Plan, every check done, no weight read
    model = setup.build_model()       # the graph with weights, on the profile's device
    engine = setup.make_engine(model, tokenizer)

Field names follow the Python API; each field has a `dsa` flag (FLAGS), vLLM-style aliases included.
A bad value is an `InputError` naming the field and its flag, raised before any heavy work.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Optional

import torch

from dsa.errors import InputError
from dsa.model.fields import is_int, seed_problem
from dsa.planning.device_profile import DTYPES as DTYPE_NAMES
from dsa.planning.device_profile import KV_DTYPES, MAX_NODES, MAX_PAGE_SIZE, MAX_PARALLEL, WEIGHT_FORMATS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}  # the compute dtypes, by name
assert tuple(DTYPES) == DTYPE_NAMES
CHOICES = {"dtype": DTYPE_NAMES, "kv_cache_dtype": KV_DTYPES, "weights": WEIGHT_FORMATS}  # the named values

# field -> the `dsa run` / `dsa plan` flags that set it (the first is the one help and errors show)
FLAGS = {
    "model": ("--model",),
    "device": ("--device",),
    "dtype": ("--dtype",),
    "kv_cache_dtype": ("--kv-cache-dtype",),
    "weights": ("--weights",),
    "indexer_fp8": ("--indexer-fp8",),
    "max_seq_len": ("--max-seq-len", "--max-model-len"),
    "page_size": ("--page-size", "--block-size"),
    "weights_seed": ("--weights-seed",),
    "tp": ("--tp", "--tensor-parallel-size"),
    "ep": ("--ep", "--expert-parallel-size"),
    "dp_attention": ("--dp", "--data-parallel-size"),
    "nodes": ("--nodes",),
    "max_num_seqs": ("--max-num-seqs",),
    "max_num_batched_tokens": ("--max-num-batched-tokens",),
    "enable_prefix_caching": ("--enable-prefix-caching",),
    "enable_chunked_prefill": ("--enable-chunked-prefill",),
    "num_blocks": ("--num-blocks", "--num-gpu-blocks-override"),
    "kv_cache_memory": ("--kv-cache-memory",),
    "enforce_eager": ("--enforce-eager",),
}
# The KV + index cache of a host (platform cpu) run when neither --num-blocks nor --kv-cache-memory is given:
# at most this many GiB (vLLM's CPU backend defaults to 4 GiB; ours are small models), and never more than
# max_num_seqs full-context sequences. Accelerators get what the plan leaves after weights and workspace.
HOST_KV_CACHE_GIB = 1.0
MAX_KV_CACHE_GIB = 1 << 20


@dataclass(frozen=True)
class EngineArgs:
    """model: checkpoint directory, config.json, or built-in model name (None = the built-in trained model, mini).
    device: a device profile name (dsa/configs/devices: cpu, h200, mi300x, ascend-a3, ...) or a .yaml path.
    dtype: compute dtype (bf16 | fp16 | fp32; None = the profile's). kv_cache_dtype: bf16 | fp8 latent
    cache (None = the profile's). weights: fp8 keeps a checkpoint's fp8 weights, bf16 dequantises (None =
    the profile's). indexer_fp8: False = indexer q/k without fp8 rounding. max_seq_len: context limit (None
    = the model's max_position_embeddings). page_size: KV-cache tokens per page (None = the profile's).
    weights_seed: seed of the random weights of config-only models. tp / ep / dp_attention / nodes: the
    parallel layout (None = the profile's).
    Serving (vLLM's names): max_num_seqs requests and max_num_batched_tokens tokens per step;
    enable_prefix_caching reuses the cache blocks of shared prompt prefixes; enable_chunked_prefill splits
    long prompts over steps. The cache: num_blocks blocks of page_size tokens, or kv_cache_memory GiB, or
    (neither) what the plan leaves (on a host: at most HOST_KV_CACHE_GIB). enforce_eager: never replay decode
    steps from CUDA graphs (by default they are captured on CUDA when every chosen provider is capturable).
    """

    model: Optional[str] = None
    device: str = "cpu"
    dtype: Optional[str] = None
    kv_cache_dtype: Optional[str] = None
    weights: Optional[str] = None
    indexer_fp8: bool = True
    max_seq_len: Optional[int] = None
    page_size: Optional[int] = None
    weights_seed: int = 0
    tp: Optional[int] = None
    ep: Optional[int] = None
    dp_attention: Optional[int] = None
    nodes: Optional[int] = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    num_blocks: Optional[int] = None
    kv_cache_memory: Optional[float] = None
    enforce_eager: bool = False

    def __post_init__(self):
        if self.model is not None:
            if not isinstance(self.model, (str, os.PathLike)) or not str(self.model).strip():
                raise _bad("model", self.model, "a checkpoint directory, a config.json or a built-in model name")
            object.__setattr__(self, "model", str(self.model))
        if not isinstance(self.device, (str, os.PathLike)) or not str(self.device).strip():
            raise _bad("device", self.device, "a device profile name (see `dsa devices`) or a .yaml path")
        object.__setattr__(self, "device", str(self.device))
        if self.dtype is not None:
            names = {v: k for k, v in DTYPES.items()}
            dtype = names.get(self.dtype, self.dtype) if isinstance(self.dtype, torch.dtype) else self.dtype
            if not isinstance(dtype, str) or dtype not in DTYPES:
                raise _bad("dtype", self.dtype, f"one of {', '.join(DTYPES)}")
            object.__setattr__(self, "dtype", dtype)
        _choice("kv_cache_dtype", self.kv_cache_dtype, KV_DTYPES)
        _choice("weights", self.weights, WEIGHT_FORMATS)
        if not isinstance(self.indexer_fp8, bool):
            raise _bad("indexer_fp8", self.indexer_fp8, "True or False")
        _integer("max_seq_len", self.max_seq_len, low=2)
        _integer("page_size", self.page_size, low=1, high=MAX_PAGE_SIZE + 1)
        problem = seed_problem(self.weights_seed)
        if problem:
            raise InputError(f"{_where('weights_seed')} {problem}")
        for name in ("tp", "ep", "dp_attention"):
            _integer(name, getattr(self, name), low=1, high=MAX_PARALLEL + 1)
        _integer("nodes", self.nodes, low=1, high=MAX_NODES + 1)
        _integer("max_num_seqs", self.max_num_seqs, low=1, high=(1 << 20) + 1)
        _integer("max_num_batched_tokens", self.max_num_batched_tokens, low=1, high=(1 << 24) + 1)
        _integer("num_blocks", self.num_blocks, low=1, high=(1 << 31))
        for name in ("enable_prefix_caching", "enable_chunked_prefill", "enforce_eager"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, getattr(self, name), "True or False")
        mem = self.kv_cache_memory
        if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float)) or not math.isfinite(mem)
                                or not 0 < mem <= MAX_KV_CACHE_GIB):
            raise _bad("kv_cache_memory", mem, f"a number of GiB in (0, {MAX_KV_CACHE_GIB}]")
        if not self.enable_chunked_prefill and self.max_seq_len is not None \
                and self.max_num_batched_tokens < self.max_seq_len:
            raise InputError(f"without chunked prefill a prompt runs in one step, so max_num_batched_tokens "
                             f"({self.max_num_batched_tokens}) must be >= max_seq_len ({self.max_seq_len}); "
                             "raise --max-num-batched-tokens or keep --enable-chunked-prefill")
    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineArgs":
        """Keyword arguments of the Python API; an unknown name is an InputError listing the known ones."""
        unknown = sorted(set(kwargs) - set(cls.field_names()))
        if unknown:
            raise InputError(f"unknown option(s) {', '.join(unknown)}; the options are {', '.join(cls.field_names())}")
        return cls(**{k: v for k, v in kwargs.items() if v is not None or k == "model"})

    @classmethod
    def from_cli(cls, namespace: Any) -> "EngineArgs":
        """The fields a parsed `dsa` command line carries (flags it does not have keep their defaults)."""
        given = {f: getattr(namespace, f) for f in cls.field_names() if getattr(namespace, f, None) is not None}
        return cls(**given)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def replace(self, **changes: Any) -> "EngineArgs":
        return dataclasses.replace(self, **changes)

    @property
    def layout_overrides(self) -> dict[str, Optional[int]]:
        return {"tp": self.tp, "ep": self.ep, "dp_attention": self.dp_attention, "nodes": self.nodes}

    def load_profile(self):
        """The device profile, with this run's dtype and page size in place of its own."""
        from dsa.planning.device_profile import load_profile

        profile = load_profile(self.device)
        if self.dtype is not None or self.page_size is not None:
            kv = dataclasses.replace(profile.kv_cache, page_size=self.page_size or profile.kv_cache.page_size)
            profile = dataclasses.replace(profile, dtype=self.dtype or profile.dtype, kv_cache=kv)
        return profile

    def resolve(self, **plan_kwargs: Any) -> "EngineSetup":
        """Profile, model source and plan, with every check that needs no weights (context limit, providers,
        layout vs heads). plan_kwargs go to make_plan (context, batch, memory_gb)."""
        from dsa.io.model_source import resolve_model
        from dsa.planning.plan import make_plan

        profile = self.load_profile()
        source = resolve_model(self.model)
        limit = source.config.max_position_embeddings
        if self.max_seq_len is not None and self.max_seq_len > limit:
            raise InputError(f"max_seq_len ({FLAGS['max_seq_len'][0]}) is {self.max_seq_len} but model {source.name} "
                             f"holds at most {limit} positions (max_position_embeddings); pass at most {limit}")
        plan = make_plan(profile, source.config, kv_cache_dtype=self.kv_cache_dtype, weights=self.weights,
                         **self.layout_overrides, **plan_kwargs)
        return EngineSetup(self, profile, source, plan, self.max_seq_len or limit)


@dataclass(frozen=True)
class EngineSetup:
    """What EngineArgs resolved to: the profile, where the model comes from, the plan, the context limit."""

    args: EngineArgs
    profile: Any  # dsa.planning.device_profile.DeviceProfile
    source: Any  # dsa.io.model_source.ModelSource
    plan: Any  # dsa.planning.plan.Plan
    max_seq_len: int

    @property
    def config(self):
        return self.source.config

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.plan.dtype]

    def check_prompt(self, prompt_tokens: int) -> None:
        """InputError unless a prompt of this many tokens leaves room in the context (before any weight is read)."""
        from dsa.engine.engine import check_prompt_fits

        check_prompt_fits(prompt_tokens, self.max_seq_len, self.config.max_position_embeddings)

    def tokenizer(self):
        from dsa.io.model_source import load_source_tokenizer

        return load_source_tokenizer(self.source)

    def build_model(self, groups=None, progress: Optional[bool] = None):
        """The graph with its weights (this rank's part of them when `groups` is a ParallelGroups)."""
        from dsa.dist.launch import torch_device
        from dsa.io.model_source import build_model

        plan = self.plan
        return build_model(self.source, plan.opset(), dtype=self.dtype, kv_cache_dtype=plan.kv_cache_dtype,
                           indexer_fp8=self.args.indexer_fp8, seed=self.args.weights_seed, weights=plan.weights,
                           progress=progress, parallel=groups, device=torch_device(self.profile.platform))

    @property
    def num_blocks(self) -> int:
        """Cache blocks per DP group: --num-blocks, else --kv-cache-memory GiB, else the plan's cache (on a host
        at most HOST_KV_CACHE_GIB and max_num_seqs full contexts). At least one full-context sequence: less is an
        InputError saying what to change."""
        args, plan = self.args, self.plan
        page = plan.page_size
        per_block = plan.memory.cache_bytes_per_token * page
        per_seq = -(-self.max_seq_len // page)
        if args.num_blocks is not None:
            blocks, source = args.num_blocks, f"--num-blocks {args.num_blocks}"
        elif args.kv_cache_memory is not None:
            blocks = int(args.kv_cache_memory * (1 << 30)) // per_block
            source = f"--kv-cache-memory {args.kv_cache_memory:g} GiB"
        else:
            blocks = plan.memory.tokens_per_group // page
            source = "the memory the plan leaves for the cache"
            if self.profile.platform == "cpu":
                blocks = min(blocks, int(HOST_KV_CACHE_GIB * (1 << 30)) // per_block, args.max_num_seqs * per_seq)
                source += f" (on a host at most {HOST_KV_CACHE_GIB:g} GiB)"
        if blocks < per_seq:
            raise InputError(f"the KV cache ({source}) holds {blocks} blocks of {page} tokens, but one sequence of "
                             f"the context ({self.max_seq_len} tokens) needs {per_seq}; raise --num-blocks or "
                             "--kv-cache-memory, or lower --max-seq-len")
        return blocks

    def scheduler_config(self):
        from dsa.engine.scheduler import SchedulerConfig

        a = self.args
        return SchedulerConfig(max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens,
                               enable_chunked_prefill=a.enable_chunked_prefill)

    def make_engine(self, model, eos_token_ids=()):
        """The generation engine over `model` (the graph, or a DP lockstep wrapper of it)."""
        from dsa.engine.engine import Engine

        plan = self.plan
        return Engine(model, self.config, page_size=plan.page_size, kv_cache_dtype=plan.kv_cache_dtype,
                      dtype=self.dtype, indexer_fp8=self.args.indexer_fp8, max_seq_len=self.max_seq_len,
                      eos_token_ids=tuple(eos_token_ids), num_blocks=self.num_blocks,
                      scheduler=self.scheduler_config(), enable_prefix_caching=self.args.enable_prefix_caching,
                      cuda_graphs=not self.args.enforce_eager)


def _where(name: str) -> str:
    return f"{name} ({FLAGS[name][0]})" if name in FLAGS else name


def _bad(name: str, value: Any, expected: str) -> InputError:
    return InputError(f"{_where(name)} must be {expected}, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value is not None and (not isinstance(value, str) or value not in choices):
        raise _bad(name, value, f"one of {', '.join(choices)}")


def _integer(name: str, value: Any, *, low: int, high: Optional[int] = None) -> None:
    """Integers are integers: not True, not 4.0, not '4'."""
    if value is None:
        return
    ok = is_int(value) and value >= low and (high is None or value < high)
    if not ok:
        span = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high - 1}]"
        raise _bad(name, value, span)


__all__ = ["EngineArgs", "EngineSetup", "DTYPES", "FLAGS"]
