"""The engine core on the tiny model (fp32): continuous batching, prefix cache, preemption and chunked prefill
change how the tokens are computed, never what they are.

Logits are compared within the serving-path tolerance of tests/model/test_prefill_decode.py (atol/rtol 1e-4:
only fp32 rounding of differently shaped GEMMs differs); greedy tokens exactly: along the greedy paths of the
seeded prompts below the smallest top-1 / top-2 log-probability gap is 5.5e-3 (measured), ~1000x the fp32
noise of a differently shaped computation, so a different token is a real divergence.
"""
from __future__ import annotations

import pytest
import torch

from dsa.engine.engine import Engine
from dsa.engine.sampling import SamplingParams
from dsa.engine.scheduler import SchedulerConfig
from dsa.io.model_source import build_model, resolve_model

PAGE = 16
MAX_SEQ = 256
GREEDY = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
_g = torch.Generator().manual_seed(11)
PROMPTS = [torch.randint(2, 260, (int(n),), generator=_g).tolist()
           for n in torch.randint(3, 90, (16,), generator=_g)]


class Recorder(torch.nn.Module):
    """The model, keeping each forward's last-row logits per request row (for logit comparisons)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, []

    def forward(self, ids, batch, cache, last_only=False):
        out = self.inner(ids, batch, cache, last_only=last_only)
        self.calls.append((batch, out.detach().clone()))
        return out


@pytest.fixture(scope="module")
def model():
    src = resolve_model(None)
    from dsa.hal import OpSet

    return build_model(src, OpSet.single("torch"), dtype=torch.float32, kv_cache_dtype="bf16", indexer_fp8=True, seed=0)


def _engine(model, **kw) -> Engine:
    sched = kw.pop("scheduler", SchedulerConfig())
    return Engine(model, model.config, page_size=PAGE, dtype=torch.float32, max_seq_len=MAX_SEQ,
                  scheduler=sched, **kw)


def _alone(model, prompts, params=GREEDY):
    eng = _engine(model)
    return [list(eng.generate(p, params)) for p in prompts]


def test_batch_of_16_gives_each_request_its_tokens_alone(model):
    alone = _alone(model, PROMPTS)
    eng = _engine(model)
    outs = eng.generate_all(PROMPTS, [GREEDY] * len(PROMPTS))
    assert [o.new_token_ids for o in outs] == alone
    assert eng.blocks.usage == 0 and not eng.core.has_unfinished()
    assert all(len(t) == 12 for t in alone)


def test_seeded_sampling_does_not_depend_on_the_batch(model):
    params = [SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=8, seed=100 + i, ignore_eos=True)
              for i in range(6)]
    eng = _engine(model)
    alone = [list(eng.generate(p, sp)) for p, sp in zip(PROMPTS[:6], params)]
    together = eng.generate_all(PROMPTS[:6], params)
    assert [o.new_token_ids for o in together] == alone


def test_preemption_by_recompute_keeps_the_answers(model):
    alone = _alone(model, PROMPTS[:8])
    # 20 blocks of 16 = 320 token slots for 8 requests of up to ~100 tokens: they cannot all stay resident
    eng = _engine(model, num_blocks=20, enable_prefix_caching=False)
    outs = eng.generate_all(PROMPTS[:8], [GREEDY] * 8)
    assert eng.core.scheduler.num_preemptions > 0
    assert [o.new_token_ids for o in outs] == alone
    assert eng.blocks.usage == 0


def test_chunked_prefill_keeps_the_answers(model):
    alone = _alone(model, PROMPTS[:4])
    eng = _engine(model, scheduler=SchedulerConfig(max_num_batched_tokens=24))
    outs = eng.generate_all(PROMPTS[:4], [GREEDY] * 4)
    assert [o.new_token_ids for o in outs] == alone
    assert eng.core.num_steps > 12  # really chunked: the ~190 prompt tokens took several steps


def _first_logits(rec: Recorder, row_of_request) -> torch.Tensor:
    batch, out = rec.calls[0]
    return out[row_of_request]


@pytest.mark.parametrize("kv", ["bf16", "fp8"])
def test_prefix_cache_gives_the_same_logits(model, kv):
    """A request whose prompt starts with a cached prefix (latent rows and fp8 index keys reused) gets the
    logits of the same request computed from scratch."""
    if kv == "fp8":
        from dsa.hal import OpSet

        m = build_model(resolve_model(None), OpSet.single("torch"), dtype=torch.float32, kv_cache_dtype="fp8",
                        indexer_fp8=True, seed=0)
    else:
        m = model
    shared = torch.randint(2, 260, (70,), generator=torch.Generator().manual_seed(3)).tolist()  # 4 full blocks
    first, second = shared + [5, 6, 7], shared + [9, 8]
    one = SamplingParams(temperature=0, max_new_tokens=1, ignore_eos=True, logprobs=5)

    rec = Recorder(m)
    eng = Engine(rec, m.config, page_size=PAGE, dtype=torch.float32, max_seq_len=MAX_SEQ, kv_cache_dtype=kv)
    list(eng.generate(first, one))
    rec.calls.clear()
    hit = eng.generate_all([second], [one])[0]
    assert hit.num_cached_tokens == 64 and eng.blocks.hits == 64
    cached_logits = rec.calls[0][1][0]
    assert rec.calls[0][0].positions[0] == 64  # only the 6 tokens after the cached blocks were computed

    rec2 = Recorder(m)
    fresh = Engine(rec2, m.config, page_size=PAGE, dtype=torch.float32, max_seq_len=MAX_SEQ, kv_cache_dtype=kv,
                   enable_prefix_caching=False)
    miss = fresh.generate_all([second], [one])[0]
    assert miss.num_cached_tokens == 0
    torch.testing.assert_close(cached_logits, rec2.calls[0][1][0], atol=1e-4, rtol=1e-4)
    assert hit.new_token_ids == miss.new_token_ids


def test_abandoned_generation_frees_its_blocks(model):
    eng = _engine(model)
    gen = eng.generate(PROMPTS[0], SamplingParams(temperature=0, max_new_tokens=50, ignore_eos=True))
    next(gen)
    assert eng.blocks.usage > 0
    gen.close()
    assert eng.blocks.usage == 0 and not eng.core.has_unfinished()


def test_stop_rules(model):
    eng = _engine(model)
    free = list(eng.generate(PROMPTS[3], GREEDY))
    stop_at = free[4]
    cut = list(eng.generate(PROMPTS[3], SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True,
                                                        stop_token_ids=[stop_at])))
    assert cut == free[:free.index(stop_at)] and eng.last_stats.stop_reason == "stop_token"
    eos_eng = Engine(model, model.config, page_size=PAGE, dtype=torch.float32, max_seq_len=MAX_SEQ,
                     eos_token_ids=(stop_at,))
    assert list(eos_eng.generate(PROMPTS[3], SamplingParams(temperature=0, max_new_tokens=12))) == cut
    assert eos_eng.last_stats.stop_reason == "eos"
    assert list(eos_eng.generate(PROMPTS[3], GREEDY)) == free  # ignore_eos
    short = Engine(model, model.config, page_size=PAGE, dtype=torch.float32, max_seq_len=len(PROMPTS[3]) + 3)
    assert len(list(short.generate(PROMPTS[3], GREEDY))) == 3 and short.last_stats.stop_reason == "context"


def test_logprobs(model):
    eng = _engine(model)
    out = eng.generate_all([PROMPTS[5]], [SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True,
                                                         logprobs=3)])[0]
    assert len(out.new_logprobs) == 4
    for tok, lp in zip(out.new_token_ids, out.new_logprobs):
        assert lp.token_id == tok and len(lp.top) == 3
        assert lp.top[0][0] == tok and lp.logprob == pytest.approx(lp.top[0][1])  # greedy: the best token
        assert lp.logprob <= 0 and lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]


def test_engine_refuses_a_cache_smaller_than_one_context(model):
    from dsa.errors import InputError

    with pytest.raises(InputError, match="needs 16"):
        _engine(model, num_blocks=15)
