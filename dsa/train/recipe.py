"""The DSA training recipe at small scale (docs/model-and-ops.md 8; the V3.2-Exp paper), on CPU:

  a. dense pre-training of the whole model (MLA, MoE, indexer present but unused), short windows first,
     then full-length ones so every position up to the context is seen;
  b. dense warm-up: everything frozen but the indexer, trained with KL(p_t || softmax(I_t)) (p_t = the main
     attention summed over heads, L1-normalised);
  c. sparse training: top-k selection on; the model trained with the LM loss only, the indexer with the KL
     restricted to its selected set, its input detached from the main graph.

`run(recipe, ...)` returns a report (losses per step, tokens/s, held-out loss and indexer recall before /
after the warm-up, durations) and leaves the trained model; `dsa.train.command` writes the checkpoint.
MoE balance: DeepSeek-V3's auxiliary-loss-free rule (each expert's router bias moves by `bias_rate` towards
the mean load after every step).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from dsa.model.config import ModelConfig
from dsa.model.transformer import DeepseekV32
from dsa.train.graph import TrainGraph, indexer_parameters, trainable
from dsa.train.losses import indexer_kl, lm_loss, recall_sums


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    short_len: int = 256  # stage a, first part: windows of this many tokens
    short_batch: int = 8
    short_steps: int = 2400
    long_batch: int = 2  # stage a (second part), b and c: full-context windows (max_position_embeddings)
    long_steps: int = 400
    warmup_steps: int = 500
    sparse_steps: int = 400
    lr: float = 3e-3  # stage a (AdamW, linear warm-up then cosine to lr / 10)
    lr_warmup_steps: int = 100
    lr_indexer: float = 1e-3  # stage b (the paper's) and the indexer in stage c
    lr_sparse: float = 3e-4  # the main model in stage c
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    bias_rate: float = 1e-3
    eval_windows: int = 8  # held-out windows of the full context for the loss / recall checks
    passkey_rate: float = 0.5  # share of training windows with a passkey pair (dsa.train.passkeys)


@dataclass
class StageLog:
    name: str
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    loss: list[float] = field(default_factory=list)  # LM loss (stage b: the KL)
    kl: list[float] = field(default_factory=list)  # indexer KL per step (stages b, c)


def build(config: ModelConfig, seed: int) -> DeepseekV32:
    """A float32 model with seeded initial weights (dsa.model.weights.random_checkpoint: N(0, 1/fan_in))."""
    from dsa.hal import OpSet
    from dsa.model.weights import random_checkpoint

    model = DeepseekV32(config, OpSet.single("torch"), dtype=torch.float32, kv_cache_dtype="bf16", indexer_fp8=False,
                        fp8_weights=False)
    model.load_hf_state_dict(random_checkpoint(config, seed, fp8=False, dtype=torch.float32))
    return model


def _schedule(step: int, total: int, warm: int, peak: float) -> float:
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _balance(model: DeepseekV32, loads: list[torch.Tensor], rate: float) -> None:
    """Aux-loss-free balancing: bias += rate * sign(mean load - load) per MoE layer."""
    moes = [layer.mlp for layer in model.model.layers if model.config.is_moe_layer(layer.layer_id)]
    with torch.no_grad():
        for moe, load in zip(moes, loads):
            load = load.float()
            moe.gate.e_score_correction_bias += rate * torch.sign(load.mean() - load)


def _step(opt, params, clip) -> None:
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate(model: DeepseekV32, windows: torch.Tensor) -> dict:
    """Held-out: LM loss dense and sparse, the indexer's recall of the dense attention mass (per layer), and its
    ceiling (the mass on the k keys the dense attention itself weighs most)."""
    g = TrainGraph(model)
    k = model.config.index_topk
    layers = model.config.num_hidden_layers
    dense_loss, sparse_loss, recalls, ceilings, rows = 0.0, 0.0, [0.0] * layers, [0.0] * layers, 0
    for w in windows.split(1):
        d = g(w[:, :-1], mode="dense", want_aux=True)
        dense_loss += float(lm_loss(d.logits, w))
        sparse_loss += float(lm_loss(g(w[:, :-1], mode="sparse").logits, w))
        mass, best, n = recall_sums(d.aux, k, empty=float("nan"))  # nan: as a layer's recall x 0 rows
        for i, (m, b) in enumerate(zip(mass, best)):
            recalls[i] += m
            ceilings[i] += b
        rows += n
    n = len(windows)
    return {"dense_loss": dense_loss / n, "sparse_loss": sparse_loss / n,
            "recall_per_layer": [r / rows if rows else float("nan") for r in recalls],
            "recall": sum(recalls) / (rows * layers) if rows else float("nan"),
            "ceiling_per_layer": [c / rows if rows else float("nan") for c in ceilings],
            "ceiling": sum(ceilings) / (rows * layers) if rows else float("nan")}


def run(config: ModelConfig, recipe: Recipe, sample: Callable[[int, int], torch.Tensor],
        heldout: torch.Tensor, progress: bool = True, log: Optional[Callable[[str], None]] = None) -> tuple:
    """Train a new model; sample(batch, length) -> [batch, length + 1] int64 token windows. Returns (model,
    report dict)."""
    from tqdm import tqdm

    say = log or (lambda s: None)
    torch.manual_seed(recipe.seed)
    model = build(config, recipe.seed)
    params = trainable(model)
    index_params = indexer_parameters(model)
    index_ids = {id(p) for p in index_params}
    main_params = [p for p in params if id(p) not in index_ids]
    g = TrainGraph(model)
    L = config.max_position_embeddings
    report = {"recipe": asdict(recipe), "params": sum(p.numel() for p in params),
              "indexer_params": sum(p.numel() for p in index_params), "stages": {}, "eval": {}}

    def loop(name: str, steps: int, batch: int, length: int, body: Callable[[int, torch.Tensor], tuple]):
        st = StageLog(name)
        bar = tqdm(range(steps), desc=name, disable=not progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        for i in bar:
            ids = sample(batch, length)
            loss, kl = body(i, ids)
            st.steps += 1
            st.tokens += batch * length
            st.loss.append(loss)
            if kl is not None:
                st.kl.append(kl)
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss:.3f}", **({"kl": f"{kl:.3f}"} if kl is not None else {}),
                            tok_s=f"{st.tokens / elapsed:.0f}")
        st.seconds = time.perf_counter() - t0
        report["stages"][name] = asdict(st)
        say(f"{name}: {st.steps} steps, {st.tokens} tokens in {st.seconds:.0f} s, last loss {st.loss[-1]:.3f}")

    # a. dense pre-training (the indexer's parameters get no gradient here: it is not used)
    opt = torch.optim.AdamW(main_params, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.95))
    total_a = recipe.short_steps + recipe.long_steps

    def dense(offset):
        def body(i, ids):
            for group in opt.param_groups:
                group["lr"] = _schedule(offset + i, total_a, recipe.lr_warmup_steps, recipe.lr)
            out = g(ids[:, :-1], mode="dense")
            loss = lm_loss(out.logits, ids)
            loss.backward()
            _step(opt, main_params, recipe.grad_clip)
            _balance(model, out.expert_load, recipe.bias_rate)
            return float(loss.detach()), None
        return body

    loop("a1-dense-short", recipe.short_steps, recipe.short_batch, recipe.short_len, dense(0))
    loop("a2-dense-long", recipe.long_steps, recipe.long_batch, L, dense(recipe.short_steps))
    report["eval"]["after_dense"] = evaluate(model, heldout)
    say(f"after dense pre-training: {report['eval']['after_dense']}")

    # b. dense warm-up of the indexer alone
    for p in main_params:
        p.requires_grad_(False)
    opt_i = torch.optim.AdamW(index_params, lr=recipe.lr_indexer, weight_decay=0.0)

    def warm(i, ids):
        out = g(ids[:, :-1], mode="dense", want_aux=True)
        kl = sum(indexer_kl(aux) for aux in out.aux)
        kl.backward()
        _step(opt_i, index_params, recipe.grad_clip)
        return float(kl.detach()), None  # the stage's loss is the KL (StageLog.loss)

    loop("b-warmup", recipe.warmup_steps, recipe.long_batch, L, warm)
    report["eval"]["after_warmup"] = evaluate(model, heldout)
    say(f"after the warm-up: {report['eval']['after_warmup']}")

    # c. sparse training: LM loss on the model, restricted KL on the detached indexer
    for p in main_params:
        p.requires_grad_(True)
    opt_c = torch.optim.AdamW([{"params": main_params, "lr": recipe.lr_sparse, "weight_decay": recipe.weight_decay},
                               {"params": index_params, "lr": recipe.lr_indexer, "weight_decay": 0.0}],
                              betas=(0.9, 0.95))

    def sparse(i, ids):
        out = g(ids[:, :-1], mode="sparse", want_aux=True, detach_indexer=True)
        lm = lm_loss(out.logits, ids)
        kl = sum(indexer_kl(aux, restrict=True) for aux in out.aux)
        (lm + kl).backward()  # disjoint: the detach keeps the KL off the model and the LM loss off the indexer
        _step(opt_c, params, recipe.grad_clip)
        _balance(model, out.expert_load, recipe.bias_rate)
        return float(lm.detach()), float(kl.detach())

    loop("c-sparse", recipe.sparse_steps, recipe.long_batch, L, sparse)
    report["eval"]["after_sparse"] = evaluate(model, heldout)
    say(f"after sparse training: {report['eval']['after_sparse']}")
    for p in params:
        p.requires_grad_(False)
    return model.eval(), report


def hf_tensors(model: DeepseekV32) -> dict[str, torch.Tensor]:
    """The model's weights under their HF names (routed experts unstacked), float, on the CPU."""
    out = {}
    for name, t in model.state_dict().items():
        parts = name.split(".")
        if len(parts) == 6 and parts[4] == "experts" and parts[5] in ("gate_proj", "up_proj", "down_proj"):
            prefix = ".".join(parts[:5])
            for e in range(t.shape[0]):
                out[f"{prefix}.{e}.{parts[5]}.weight"] = t[e].detach().cpu()
        else:
            out[name] = t.detach().cpu()
    return out


__all__ = ["Recipe", "run", "evaluate", "hf_tensors", "build"]
