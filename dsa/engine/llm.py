"""The Python API: `from dsa import LLM`.

    llm = LLM(model="path/to/DeepSeek-V3.2-Exp", device="h200")    # or a config.json / built-in name
    for out in llm.generate(["Hello", "2 + 2 ="], max_new_tokens=32, temperature=0):
        print(out.text, out.token_ids, out.stats.summary())
    logits = llm.logits([0, 100, 200])                             # float32 [3, vocab], one full forward

Same path as `dsa run`: dsa.planning.device_profile -> dsa.planning.plan -> dsa.io.model_source (checkpoint or seeded random
weights) -> dsa.engine.engine. One device (the plan is made with tp = dp_attention = ep = nodes = 1).
Every invalid argument is an `InputError` (a `DsaError`) raised before any heavy work.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from dsa.engine.engine import GenerationStats, SamplingParams
from dsa.errors import InputError

OVERRIDES = ("dtype", "kv_cache_dtype", "indexer_fp8", "max_seq_len", "weights_seed", "page_size", "weights")


@dataclass(frozen=True)
class GenerationResult:
    prompt: str
    text: str  # the generated text (the prompt not included)
    token_ids: list[int]  # the generated ids (the eos that stopped generation not included)
    stats: GenerationStats


class LLM:
    """A model ready to generate on one device.

    model: checkpoint directory, config.json, or built-in model name (None = the built-in tiny model).
    device: a device profile name (dsa/configs/devices: cpu, h200, mi300x, ascend-a3, ...) or a .yaml path.
    overrides: dtype ("bf16" | "fp16" | "fp32", the compute dtype), kv_cache_dtype ("bf16" | "fp8"),
    indexer_fp8 (False = indexer q/k without fp8 rounding), max_seq_len (context limit, default the
    model's max_position_embeddings), weights_seed (random weights of config-only models), page_size
    (KV cache tokens per page), weights ("fp8" keeps fp8 checkpoint weights, "bf16" dequantises).
    """

    def __init__(self, model: Optional[str] = None, device: str = "cpu", **overrides):
        from dsa.engine.engine import Engine
        from dsa.io.model_source import DTYPES, build_model, load_source_tokenizer, resolve_model, torch_device
        from dsa.planning.device_profile import load_profile
        from dsa.planning.hardware import detect
        from dsa.planning.plan import make_plan

        opts = _check_overrides(overrides)
        profile = load_profile(device)
        source = resolve_model(None if model is None else str(model))
        config = source.config
        max_seq_len = opts.get("max_seq_len")
        if max_seq_len is not None and not 1 < max_seq_len <= config.max_position_embeddings:
            raise InputError(f"max_seq_len must be in [2, {config.max_position_embeddings}] for model {source.name}, "
                             f"got {max_seq_len}")
        if "dtype" in opts or "page_size" in opts:
            kv = dataclasses.replace(profile.kv_cache, page_size=opts.get("page_size", profile.kv_cache.page_size))
            profile = dataclasses.replace(profile, dtype=opts.get("dtype", profile.dtype), kv_cache=kv)
        plan = make_plan(profile, config, tp=1, dp_attention=1, ep=1, nodes=1,
                         kv_cache_dtype=opts.get("kv_cache_dtype"), weights=opts.get("weights"))
        plan.check_runnable(detect())
        self.tokenizer = load_source_tokenizer(source)
        self.source, self.config, self.plan = source, config, plan
        self.indexer_fp8 = opts.get("indexer_fp8", True)
        dtype = DTYPES[plan.dtype]
        self.model = build_model(source, plan.opset(), dtype=dtype, kv_cache_dtype=plan.kv_cache_dtype,
                                 indexer_fp8=self.indexer_fp8, seed=opts.get("weights_seed", 0), weights=plan.weights,
                                 device=torch_device(plan.profile.platform))
        self.engine = Engine(self.model, config, page_size=plan.page_size, kv_cache_dtype=plan.kv_cache_dtype,
                             dtype=dtype, indexer_fp8=self.indexer_fp8,
                             max_seq_len=max_seq_len or config.max_position_embeddings,
                             eos_token_ids=tuple(self.tokenizer.eos_token_ids))

    @property
    def max_seq_len(self) -> int:
        return self.engine.max_seq_len

    def __repr__(self) -> str:
        kind = "random weights" if self.source.random_weights else "checkpoint"
        return (f"LLM(model={self.source.name!r} ({kind}), device={self.plan.profile.name!r}, dtype={self.plan.dtype}, "
                f"weights={self.plan.weights}, kv_cache={self.plan.kv_cache_dtype})")

    def generate(
        self,
        prompts: Union[str, Sequence[str]],
        max_new_tokens: int = SamplingParams.max_new_tokens,
        temperature: float = SamplingParams.temperature,
        top_p: float = SamplingParams.top_p,
        seed: Optional[int] = None,
        chat: Optional[bool] = None,
    ) -> list[GenerationResult]:
        """One result per prompt, in order. chat: None = the chat template when the tokenizer has one,
        True = always (InputError without one), False = the text as is. With a seed, every prompt samples
        from a generator seeded with it (results do not depend on the other prompts)."""
        from dsa.engine.engine import check_prompt_fits
        from dsa.io.model_source import prompt_ids

        params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an integer or None, got {seed!r}")
        single = isinstance(prompts, str)
        batch = [prompts] if single else prompts
        if not isinstance(batch, (list, tuple)) or not batch or not all(isinstance(p, str) for p in batch):
            raise InputError("prompts must be a string or a non-empty list of strings")
        if chat not in (None, True, False):
            raise InputError(f"chat must be None, True or False, got {chat!r}")
        if chat and self.tokenizer.chat_template is None:
            raise InputError(f"chat=True: model {self.source.name} has no chat template; pass chat=False")
        use_chat = self.tokenizer.chat_template is not None if chat is None else chat
        encoded = [prompt_ids(self.tokenizer, p, use_chat) for p in batch]
        for ids in encoded:  # every prompt checked before any is generated
            if not ids:
                raise InputError("a prompt is empty; give at least one token")
            check_prompt_fits(len(ids), self.max_seq_len)
        results = []
        for prompt, ids in zip(batch, encoded):
            tokens = list(self.engine.generate(ids, params))
            results.append(GenerationResult(prompt, self.tokenizer.decode(tokens), tokens, self.engine.last_stats))
        return results

    @torch.inference_mode()
    def logits(self, token_ids: Union[Sequence[int], torch.Tensor]) -> torch.Tensor:
        """float32 [len(token_ids), vocab]: one full forward over the tokens (positions 0..len-1) on fresh
        cache pages."""
        from dsa.model.cache import Batch

        ids = _check_token_ids(token_ids, self.config.vocab_size, self.max_seq_len)
        engine = self.engine
        blocks = engine.allocator.allocate(-(-len(ids) // engine.page_size))
        try:
            batch = Batch.build(new_lens=[len(ids)], context_lens=[0], block_tables=[blocks], page_size=engine.page_size,
                                device=engine.device)
            ids = torch.tensor(ids, dtype=torch.long, device=engine.device)
            return self.model(ids, batch, engine.cache).float().cpu()
        finally:
            engine.allocator.free(blocks)


def _check_overrides(overrides: dict) -> dict:
    from dsa.io.model_source import DTYPES
    from dsa.planning.device_profile import KV_DTYPES

    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise InputError(f"unknown LLM option(s) {', '.join(unknown)}; the options are {', '.join(OVERRIDES)}")
    opts = {k: v for k, v in overrides.items() if v is not None}
    if "dtype" in opts:
        names = {v: k for k, v in DTYPES.items()}
        opts["dtype"] = names.get(opts["dtype"], opts["dtype"])  # torch.bfloat16 -> "bf16"
        if opts["dtype"] not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {overrides['dtype']!r}")
    if "kv_cache_dtype" in opts and opts["kv_cache_dtype"] not in KV_DTYPES:
        raise InputError(f"kv_cache_dtype must be one of {', '.join(KV_DTYPES)}, got {opts['kv_cache_dtype']!r}")
    if "weights" in opts and opts["weights"] not in ("fp8", "bf16"):
        raise InputError(f"weights must be 'fp8' or 'bf16', got {opts['weights']!r}")
    if "indexer_fp8" in opts and not isinstance(opts["indexer_fp8"], bool):
        raise InputError(f"indexer_fp8 must be True or False, got {opts['indexer_fp8']!r}")
    for name, low in (("max_seq_len", 2), ("page_size", 1), ("weights_seed", 0)):
        v = opts.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise InputError(f"{name} must be an integer >= {low}, got {v!r}")
    return opts


def _check_token_ids(token_ids, vocab_size: int, max_seq_len: int) -> list[int]:
    if isinstance(token_ids, torch.Tensor):
        if token_ids.dim() != 1 or token_ids.dtype.is_floating_point or token_ids.dtype.is_complex:
            raise InputError(f"token_ids must be a 1-d integer tensor, got {token_ids.dtype} {list(token_ids.shape)}")
        token_ids = token_ids.tolist()
    if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Sequence):
        raise InputError(f"token_ids must be a list of integers, got {type(token_ids).__name__}")
    ids = list(token_ids)
    if not ids:
        raise InputError("token_ids is empty; give at least one token")
    bad = next((i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size), None)
    if bad is not None:
        raise InputError(f"token_ids must be integers in [0, {vocab_size}), got {bad!r}")
    if len(ids) > max_seq_len:
        raise InputError(f"{len(ids)} token ids but the context holds {max_seq_len}; pass fewer (or a larger max_seq_len)")
    return ids


__all__ = ["LLM", "GenerationResult"]
