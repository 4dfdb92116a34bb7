"""`dsa eval`'s measurements: one trained checkpoint with dense attention vs DeepSeek Sparse Attention, on
held-out code.

Two models over the same weights, built as users run them (EngineArgs -> resolve_model -> build_model on
the CPU profile): fp32 compute, the indexer's fp8 rounding of q / k on as shipped, the profile's bf16
latent cache, the torch providers of the HAL ops. `sparse` is the checkpoint as shipped (its index_topk);
`dense` is the same graph built from the config with index_topk = max_position_embeddings (dataclasses.replace
on the ModelConfig), so every row selects every visible key and the sparse MLA is dense attention. Only
the selection differs.

Per context (dsa.train.eval_command runs them and writes the report):
- perplexity        N held-out windows, one forward each (a fresh Batch on free pages, as LLM.logits);
                    scored: the second half of each window (every scored token has at least context / 2
                    tokens before it), every position also reported;
- retrieval         a passkey made of held-out code: `KEY_1234 = "word"` inserted between two lines of a
                    held-out file, at least 2 x top-k tokens before the end, where `KEY_1234 = "` comes
                    again; the answer is one token, scored by its rank among `candidates` words (chance
                    1 / candidates) and by greedy exactness (the argmax over the whole vocabulary);
- copy_probe        a span of held-out code repeated >= 2 x top-k tokens later: next-token accuracy on the
                    second occurrence vs the first (does the model copy from beyond top-k at all?);
- indexer_recall    the dense attention mass (summed over heads) on the indexer's top-k, per layer, over
                    rows that see more than top-k keys (dsa.train.graph.TrainGraph, unquantised scores), and
                    its ceiling: the mass on the k keys the dense attention weighs most;
- greedy_agreement  M held-out prompts of context - new_tokens tokens, greedy through each model's engine:
                    identical tokens up to the first divergence, and identical continuations.
"""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from dsa.errors import InputError
from dsa.train.data import BOS_ID, EOS_ID, eval_windows
from dsa.train.passkeys import KEY_RANGE, encode_pair, line_starts, newline_table, word_pool

MODES = ("dense", "sparse")


@dataclass
class Pair:
    """The dense and the sparse model (same weights), each with its own engine, and what they came from."""

    models: dict[str, Any]  # mode -> DeepseekV32
    engines: dict[str, Any]  # mode -> dsa.engine.engine.Engine
    source: Any  # dsa.io.model_source.ModelSource
    topk: int  # the shipped index_topk
    max_context: int  # max_position_embeddings

    @property
    def tokenizer_json(self) -> Path:
        return Path(self.source.checkpoint_dir) / "tokenizer.json"


def load_pair(model: Optional[str], sequences: int = 1) -> Pair:
    """Both models from `model` (a checkpoint directory or built-in name; None = the built-in model), with
    engines whose caches hold `sequences` full contexts. InputError for a source without trained weights."""
    from dsa.engine.args import EngineArgs
    from dsa.model.transformer import DeepseekV32

    args = EngineArgs.from_kwargs(model=model, device="cpu", dtype="fp32", weights="bf16", indexer_fp8=True,
                                  enable_prefix_caching=False)
    setup = args.resolve()
    source, config, plan = setup.source, setup.config, setup.plan
    if source.random_weights or not (Path(source.checkpoint_dir) / "tokenizer.json").is_file():
        raise InputError(f"model {source.name!r} is not a trained checkpoint with a tokenizer.json (config-only models "
                         "get random weights); pass --model DIR of a checkpoint (e.g. one `dsa train` wrote)")
    per_seq = -(-config.max_position_embeddings // plan.page_size)
    setup = args.replace(num_blocks=(sequences + 1) * per_seq).resolve()
    sparse = setup.build_model(progress=False)
    dense_config = dataclasses.replace(config, index_topk=config.max_position_embeddings)
    dense = DeepseekV32(dense_config, plan.opset(), dtype=setup.dtype, kv_cache_dtype=plan.kv_cache_dtype,
                        indexer_fp8=True, fp8_weights=False)
    dense.load_state_dict(sparse.state_dict(), strict=True)
    dense.eval()
    models = {"dense": dense, "sparse": sparse}
    eos = setup.tokenizer().eos_token_ids
    engines = {mode: setup.make_engine(m, eos) for mode, m in models.items()}
    return Pair(models, engines, source, config.index_topk, config.max_position_embeddings)


# ---- held-out text --------------------------------------------------------------------------------------
@dataclass
class HeldOut:
    """The held-out split of the corpus encoded with the checkpoint's own tokenizer."""

    stream: Tensor  # int32, per file bos, ids, eos (dsa.train.data.encode_corpus)
    files: int
    pinned: bool  # this Python's stdlib is the pinned corpus (the one the shipped model was split on)
    tokenizer: Any  # tokenizers.Tokenizer


def heldout(tokenizer_json: Path, max_files: Optional[int] = None) -> HeldOut:
    """dsa.train.corpus's held-out files (the first `max_files` of them when given), encoded afresh: no
    training cache needed."""
    from tokenizers import Tokenizer

    from dsa.train.corpus import PINNED, corpus_files, corpus_pin, split
    from dsa.train.data import encode_corpus

    files = corpus_files()
    pin = corpus_pin(files)
    held = split(files)[1]
    if max_files is not None:
        held = held[:max_files]
    if not held:
        raise InputError("no held-out files found in this Python's standard library")
    tok = Tokenizer.from_file(str(tokenizer_json))
    stream = encode_corpus(tok, held)
    return HeldOut(stream, len(held), (pin.files, pin.sha256) == (PINNED.files, PINNED.sha256), tok)


# ---- one forward ----------------------------------------------------------------------------------------
@torch.inference_mode()
def window_logits(model, engine, ids: Tensor) -> Tensor:
    """float32 [len(ids), vocab]: one forward over ids (positions 0..len-1) on free pages of the engine's cache."""
    from dsa.model.cache import Batch

    blocks = engine.blocks.allocate(engine.blocks.blocks_for(len(ids)))
    try:
        batch = Batch.build(new_lens=[len(ids)], context_lens=[0], block_tables=[blocks], page_size=engine.page_size,
                            device=engine.device)
        return model(ids.long().to(engine.device), batch, engine.cache).float().cpu()
    finally:
        engine.blocks.free(blocks)


def _nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-position negative log-likelihood (nats) of targets under logits [L, V]."""
    return torch.nn.functional.cross_entropy(logits, targets.long(), reduction="none")


# ---- perplexity -----------------------------------------------------------------------------------------
def perplexity(pair: Pair, stream: Tensor, context: int, windows: int) -> dict:
    """Held-out perplexity, dense and sparse, over `windows` evenly spaced windows of `context` tokens."""
    rows = eval_windows(stream, context, windows)  # [n, context + 1]
    half = context // 2
    sums = {m: {"half": 0.0, "all": 0.0} for m in MODES}
    gaps = []  # per window: sparse - dense mean NLL of the scored half (the paired difference)
    for w in rows:
        half_nll = {}
        for mode in MODES:
            nll = _nll(window_logits(pair.models[mode], pair.engines[mode], w[:-1]), w[1:])
            half_nll[mode] = float(nll[half:].mean())
            sums[mode]["half"] += float(nll[half:].sum())
            sums[mode]["all"] += float(nll.sum())
        gaps.append(half_nll["sparse"] - half_nll["dense"])
    n_half, n_all = len(rows) * (context - half), len(rows) * context
    spread = torch.tensor(gaps, dtype=torch.float64).std().item() if len(gaps) > 1 else float("nan")
    out = {"context": context, "windows": len(rows), "scored_tokens": n_half,
           "scored": f"positions {half}..{context - 1}",
           # standard error of sparse/dense - 1 from the spread of the per-window differences (log ratio ~ ratio - 1)
           "sparse_vs_dense_se_pct": 100 * spread / math.sqrt(len(gaps))}
    for suffix, key, n in (("", "half", n_half), ("_all_positions", "all", n_all)):
        for mode in MODES:
            out[f"{mode}_ppl{suffix}"] = math.exp(sums[mode][key] / n)
        out[f"sparse_vs_dense_pct{suffix}"] = 100 * (out[f"sparse_ppl{suffix}"] / out[f"dense_ppl{suffix}"] - 1)
    return out


# ---- retrieval ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    ids: Tensor  # [context] int64: bos, code, the definition, code, the query (its last token precedes the answer)
    answer: int  # the value's token id
    candidates: tuple[int, ...]  # the answer and the distractors
    distance: int  # tokens from the answer in the definition to the end of the query


class _Code:
    """Slices of held-out code that start at a line start and stay inside one file."""

    def __init__(self, held: HeldOut):
        ids = held.stream.long()
        tok = held.tokenizer
        newline = newline_table(tok)
        sep = (ids == EOS_ID) | (ids == BOS_ID)
        n = ids.numel()
        pos = torch.arange(n)
        # next separator at or after each position: reversed running minimum of the separators' positions
        marks = torch.where(sep, pos, torch.full_like(pos, n))
        self.next_sep = marks.flip(0).cummin(0).values.flip(0)
        starts = torch.zeros(n, dtype=torch.bool)
        starts[1:] = newline[ids[:-1].clamp(0, newline.numel() - 1)] | sep[:-1]
        self.starts = pos[starts & ~sep]
        self.ids, self.newline = ids, newline

    def slice(self, length: int, rng: random.Random) -> Optional[Tensor]:
        """`length` ids of one file from a line start, or None when no file is that long."""
        ok = self.starts[self.next_sep[self.starts] - self.starts >= length]
        if ok.numel() == 0:
            return None
        p = int(ok[rng.randrange(ok.numel())])
        return self.ids[p:p + length]

    def line_starts(self, code: Tensor, lo: int, hi: int) -> list[int]:
        """Offsets in [lo, hi] of `code` where a line starts (after a newline token); [lo] when none does."""
        return line_starts(self.newline, code, lo, hi) or [lo]


def retrieval_cases(held: HeldOut, context: int, topk: int, n: int, candidates: int, seed: int) -> list[Case]:
    """`n` passkey cases of exactly `context` tokens whose definition lies >= 2 x topk tokens before the query;
    [] when the context is too short for that."""
    tok = held.tokenizer
    pool = word_pool(tok)
    if len(pool) < candidates:
        raise InputError(f"the tokenizer has {len(pool)} one-token words, fewer than --candidates {candidates}")
    code, rng = _Code(held), random.Random(f"{seed}-{context}")
    cases = []
    for _ in range(n):
        name = f"KEY_{rng.randrange(*KEY_RANGE)}"
        cands = rng.sample(pool, candidates)
        answer = cands[0]
        head, definition, query = encode_pair(tok, name, answer)
        filler = context - 1 - len(definition) - len(query)
        if filler < 2 * topk:
            return []
        body = code.slice(filler, rng)
        if body is None:
            raise InputError(f"no held-out file holds {filler} tokens of filler for context {context}")
        at = rng.choice(code.line_starts(body, 0, filler - 2 * topk))
        ids = torch.cat([torch.tensor([BOS_ID]), body[:at], torch.tensor(definition), body[at:], torch.tensor(query)])
        distance = context - (1 + at + len(head))
        cases.append(Case(ids.long(), answer, tuple(sorted(cands)), distance))
    return cases


def retrieval(pair: Pair, held: HeldOut, context: int, n: int, candidates: int, seed: int) -> Optional[dict]:
    """Passkey accuracy dense vs sparse at `context` (None when the context leaves no room for 2 x top-k)."""
    cases = retrieval_cases(held, context, pair.topk, n, candidates, seed)
    if not cases:
        return None
    hits = {m: {"rank": 0, "greedy": 0, "logprob": 0.0} for m in MODES}
    only = {m: 0 for m in MODES}  # cases only this mode gets right (the paired difference's discordant cases)
    for case in cases:
        right = {}
        for mode in MODES:
            last = window_logits(pair.models[mode], pair.engines[mode], case.ids)[-1]
            cand = torch.tensor(case.candidates)
            right[mode] = int(cand[int(last[cand].argmax())]) == case.answer
            hits[mode]["rank"] += right[mode]
            hits[mode]["greedy"] += int(last.argmax()) == case.answer
            hits[mode]["logprob"] += float(torch.log_softmax(last, -1)[case.answer])
        for mode, other in (MODES, MODES[::-1]):
            only[mode] += right[mode] and not right[other]
    k = len(cases)
    out = {"context": context, "cases": k, "candidates": candidates, "chance_pct": 100 / candidates,
           "distance_min": min(c.distance for c in cases), "distance_max": max(c.distance for c in cases)}
    for mode in MODES:
        out[f"{mode}_acc_pct"] = 100 * hits[mode]["rank"] / k
        out[f"{mode}_greedy_pct"] = 100 * hits[mode]["greedy"] / k
        out[f"{mode}_logprob"] = hits[mode]["logprob"] / k
        out[f"only_{mode}_right"] = only[mode]
    out["sparse_minus_dense_points"] = out["sparse_acc_pct"] - out["dense_acc_pct"]
    out["dense_above_chance"] = above_chance(out["dense_acc_pct"], out["chance_pct"], k)
    return out


def above_chance(acc_pct: float, chance_pct: float, n: int) -> bool:
    """True when an accuracy over n cases lies more than two binomial standard deviations above chance: only
    then does a sparse-vs-dense difference of the task say something about the sparse attention."""
    p = chance_pct / 100
    return acc_pct > chance_pct + 200 * math.sqrt(p * (1 - p) / max(1, n))


COPY_SPAN = 64  # tokens of the repeated span (fewer when the context is short)


def copy_probe(pair: Pair, held: HeldOut, context: int, n: int, seed: int) -> Optional[dict]:
    """In-context copying beyond top-k: a span of held-out code, >= 2 x top-k tokens of other held-out code,
    the same span again (`context` tokens in all). Top-1 next-token accuracy on the span's second occurrence
    (which a model that copies predicts from the first) against its first (the model without the copy), dense
    and sparse. None when the context leaves no room."""
    span = min(COPY_SPAN, (context - 1 - 2 * pair.topk) // 2)
    gap = context - 1 - 2 * span
    if span < 2 or gap < 2 * pair.topk:
        return None
    code, rng = _Code(held), random.Random(f"copy-{seed}-{context}")
    hits = {m: [0, 0] for m in MODES}  # first, second occurrence
    for _ in range(n):
        a, g = code.slice(span, rng), code.slice(gap, rng)
        if a is None or g is None:
            raise InputError(f"no held-out file holds {max(span, gap)} tokens for the copy probe at context {context}")
        ids = torch.cat([torch.tensor([BOS_ID]), a, g, a]).long()
        second = 1 + span + gap
        for mode in MODES:
            pred = window_logits(pair.models[mode], pair.engines[mode], ids).argmax(-1)
            hits[mode][0] += int((pred[1:span] == ids[2:span + 1]).sum())
            hits[mode][1] += int((pred[second:second + span - 1] == ids[second + 1:second + span]).sum())
    total = n * (span - 1)
    out = {"context": context, "cases": n, "span": span, "distance": span + gap}
    for mode in MODES:
        out[f"{mode}_first_pct"] = 100 * hits[mode][0] / total
        out[f"{mode}_second_pct"] = 100 * hits[mode][1] / total
    return out


# ---- indexer recall -------------------------------------------------------------------------------------
@torch.no_grad()
def indexer_recall(pair: Pair, stream: Tensor, context: int, windows: int) -> dict:
    """Per layer, the share of the dense attention mass (summed over heads) on the indexer's top-k, over the
    rows of `windows` held-out windows that see more than top-k keys (none at context <= top-k: recall 1)."""
    from dsa.train.graph import TrainGraph
    from dsa.train.losses import recall_sums

    graph = TrainGraph(pair.models["sparse"])
    layers = pair.models["sparse"].config.num_hidden_layers
    mass, best, rows = [0.0] * layers, [0.0] * layers, 0
    for w in eval_windows(stream, context, windows):
        out = graph(w[None, :-1].long(), mode="dense", want_aux=True)
        layer_mass, layer_best, n = recall_sums(out.aux, pair.topk)
        for i, (m, b) in enumerate(zip(layer_mass, layer_best)):
            mass[i] += m
            best[i] += b
        rows += n
    per_layer = [m / rows if rows else float("nan") for m in mass]
    ceiling = [b / rows if rows else float("nan") for b in best]
    return {"context": context, "windows": windows, "rows": rows, "recall_per_layer": per_layer,
            "recall": sum(per_layer) / layers if rows else float("nan"), "ceiling_per_layer": ceiling,
            "ceiling": sum(ceiling) / layers if rows else float("nan")}


# ---- greedy agreement -----------------------------------------------------------------------------------
def greedy_agreement(pair: Pair, stream: Tensor, context: int, prompts: int, new_tokens: int) -> dict:
    """`prompts` held-out prompts of context - new_tokens tokens, `new_tokens` greedy tokens through each
    engine (eos ignored), so the generations end at `context`; at most context / 2 new tokens when the context
    is short."""
    from dsa.engine.sampling import SamplingParams

    new_tokens = max(1, min(new_tokens, context // 2))
    length = context - new_tokens
    rows = [w[:-1].tolist() for w in eval_windows(stream, length, prompts)]
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
    outs = {m: [o.new_token_ids for o in pair.engines[m].generate_all(rows, [params] * len(rows))] for m in MODES}
    prefix, same = 0, 0
    for d, s in zip(outs["dense"], outs["sparse"]):
        k = next((i for i, (a, b) in enumerate(zip(d, s)) if a != b), min(len(d), len(s)))
        prefix += k
        same += d == s
    return {"context": context, "prompts": len(rows), "prompt_tokens": length, "new_tokens": new_tokens,
            "agreement_to_divergence": prefix / (len(rows) * new_tokens), "identical": same / len(rows)}


__all__ = ["Pair", "HeldOut", "Case", "load_pair", "heldout", "window_logits", "perplexity", "retrieval",
           "retrieval_cases", "word_pool", "above_chance", "copy_probe", "indexer_recall", "greedy_agreement", "MODES"]
