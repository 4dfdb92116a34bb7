"""The Python API: `from dsa import LLM`.

    llm = LLM(model="path/to/DeepSeek-V3.2-Exp", device="h200")    # or a config.json / built-in name
    for out in llm.generate(["Hello", "2 + 2 ="], max_new_tokens=32, temperature=0):
        print(out.text, out.token_ids, out.stats.summary())
    logits = llm.logits([0, 100, 200])                             # float32 [3, vocab], one full forward

Same path as `dsa run`: the keyword arguments are an EngineArgs (dsa.engine.args), resolved to a profile,
a model source and a plan, then built. One device (a layout other than 1 x 1 is refused: run several
ranks with `dsa run --nproc N`). Every error is a `DsaError`, raised before any heavy work where it can
be, and its type says what is wrong (README, "Errors"): InputError = an argument (its type or range, an
unknown option, a model path or name that does not exist, a profile for other hardware, a prompt too
long); ProfileError = `device` names no profile or its .yaml is invalid; ConfigError = a config.json;
CheckpointError = a checkpoint directory; TokenizerError = tokenizer files; NoProviderError = no
implementation of an op can run here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from dsa.engine.args import EngineArgs
from dsa.engine.engine import GenerationStats
from dsa.engine.sampling import SamplingParams
from dsa.errors import DsaError, InputError


@dataclass(frozen=True)
class GenerationResult:
    prompt: str
    text: str  # the generated text (the prompt not included)
    token_ids: list[int]  # the generated ids (the eos that stopped generation not included)
    stats: GenerationStats


class LLM:
    """A model ready to generate on one device.

    model: checkpoint directory, config.json, or built-in model name (None = the built-in trained model, mini).
    device: a device profile name (dsa/configs/devices: cpu, h200, mi300x, ascend-a3, ...) or a .yaml path.
    options: any other EngineArgs field - dtype ("bf16" | "fp16" | "fp32"), kv_cache_dtype ("bf16" | "fp8"),
    indexer_fp8, max_seq_len, page_size, weights ("fp8" | "bf16"), weights_seed. `LLM.from_engine_args`
    takes a ready EngineArgs.
    """

    def __init__(self, model: Optional[str] = None, device: str = "cpu", **options):
        args = EngineArgs.from_kwargs(model=model, device=device, **options)
        self._start(args)

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "LLM":
        if not isinstance(args, EngineArgs):
            raise InputError(f"from_engine_args takes an EngineArgs, got {type(args).__name__}")
        llm = cls.__new__(cls)
        llm._start(args)
        return llm

    def _start(self, args: EngineArgs) -> None:
        from dsa.planning.hardware import detect

        several = {k: v for k, v in args.layout_overrides.items() if v not in (None, 1)}
        if several:
            raise InputError("the LLM API runs on one device, got "
                             f"{', '.join(f'{k}={v}' for k, v in several.items())}; "
                             "run several ranks with `dsa run --nproc N` (or torchrun)")
        try:
            setup = args.replace(tp=1, ep=1, dp_attention=1, nodes=1).resolve()
            setup.plan.check_runnable(detect())
        except DsaError as err:
            if type(err) is not DsaError:  # already typed: ProfileError, ConfigError, CheckpointError, ...
                raise
            raise InputError(str(err)) from None  # untyped here: a model that does not exist, a profile for
            # other hardware - both a bad argument
        self.args, self.setup = args, setup
        self.tokenizer = setup.tokenizer()
        self.source, self.config, self.plan = setup.source, setup.config, setup.plan
        self.indexer_fp8 = args.indexer_fp8
        self.model = setup.build_model()
        self.engine = setup.make_engine(self.model, self.tokenizer.eos_token_ids)

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
            self.engine.check_prompt(len(ids))
        outs = self.engine.generate_all(encoded, [params] * len(encoded))  # all at once: continuous batching
        return [GenerationResult(prompt, self.tokenizer.decode(out.new_token_ids), out.new_token_ids, stats)
                for prompt, out, stats in zip(batch, outs, self.engine.stats)]

    @torch.inference_mode()
    def logits(self, token_ids: Union[Sequence[int], torch.Tensor]) -> torch.Tensor:
        """float32 [len(token_ids), vocab]: one full forward over the tokens (positions 0..len-1) on fresh
        cache pages."""
        from dsa.model.cache import Batch

        ids = _check_token_ids(token_ids, self.config.vocab_size, self.max_seq_len)
        engine = self.engine
        blocks = engine.blocks.allocate(engine.blocks.blocks_for(len(ids)))
        try:
            batch = Batch.build(new_lens=[len(ids)], context_lens=[0], block_tables=[blocks],
                                page_size=engine.page_size, device=engine.device)
            ids = torch.tensor(ids, dtype=torch.long, device=engine.device)
            return self.model(ids, batch, engine.cache).float().cpu()
        finally:
            engine.blocks.free(blocks)


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
        raise InputError(f"{len(ids)} token ids but the context holds {max_seq_len}; "
                         "pass fewer (or a larger max_seq_len)")
    return ids


__all__ = ["LLM", "GenerationResult"]
