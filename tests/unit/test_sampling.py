"""Sampling parameters, the sampler, and the byte tokenizer."""
import math

import pytest
import torch

from dsa.engine.sampling import SamplingParams, sample
from dsa.errors import InputError
from dsa.io.tokenizer import ByteTokenizer


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=2.5), "max_new_tokens"),
    ],
)
def test_invalid_sampling_values_are_rejected(kwargs, word):
    with pytest.raises(InputError, match=word):
        SamplingParams(**kwargs)


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, SamplingParams(temperature=0), None) == 1


def test_tiny_top_p_keeps_only_the_best_token():
    logits = torch.tensor([1.0, 1.5, 0.5, 1.4])
    g = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=1.0, top_p=1e-6)
    assert {sample(logits, params, g) for _ in range(50)} == {1}


def test_top_p_cuts_the_tail():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    params = SamplingParams(temperature=1.0, top_p=0.8)  # keeps 0 and 1 (0.5 + 0.3 reaches 0.8)
    g = torch.Generator().manual_seed(1)
    seen = {sample(probs.log(), params, g) for _ in range(400)}
    assert seen == {0, 1}


def test_sampling_follows_the_distribution_and_is_seeded():
    probs = torch.tensor([0.6, 0.25, 0.1, 0.05])
    params = SamplingParams(temperature=1.0, seed=7)
    g = torch.Generator().manual_seed(7)
    n = 4000
    counts = torch.bincount(torch.tensor([sample(probs.log(), params, g) for _ in range(n)]), minlength=4)
    freq = counts.double() / n
    # 5 standard deviations of a binomial proportion: fails only if the sampler is wrong
    tol = 5 * torch.sqrt(probs.double() * (1 - probs.double()) / n)
    assert torch.all((freq - probs.double()).abs() <= tol), (freq, probs)
    g2 = torch.Generator().manual_seed(7)
    again = torch.bincount(torch.tensor([sample(probs.log(), params, g2) for _ in range(n)]), minlength=4)
    assert torch.equal(counts, again)


def test_temperature_sharpens():
    logits = torch.tensor([1.0, 0.0])
    g = torch.Generator().manual_seed(3)
    cold = sum(sample(logits, SamplingParams(temperature=0.1), g) == 0 for _ in range(300))
    warm = sum(sample(logits, SamplingParams(temperature=2.0), g) == 0 for _ in range(300))
    # p(0) = 0.99995 at T=0.1 and 0.62 at T=2
    assert cold >= 298 and warm < 250
    assert math.isclose(torch.softmax(logits / 2.0, -1)[0].item(), 0.6225, abs_tol=1e-3)


def test_byte_tokenizer_round_trips_and_streams():
    tok = ByteTokenizer()
    text = "Sparse attention: 注意力 ✓"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id and max(ids) < tok.vocab_size
    assert tok.decode(ids) == text
    stream = tok.stream_decoder()
    assert "".join(stream.push(i) for i in ids) + stream.flush() == text


def test_extreme_but_valid_values_behave_like_their_limits():
    """top_p / temperature that underflow fp32 must still pick the best token, not token 0."""
    logits = torch.tensor([0.3, 2.0, 1.0, -4.0])
    g = torch.Generator().manual_seed(0)
    assert sample(logits, SamplingParams(temperature=1.0, top_p=1e-50), g) == 1
    assert sample(logits, SamplingParams(temperature=1e-40), g) == 1


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True])
def test_seed_out_of_range_is_rejected(seed):
    with pytest.raises(InputError, match="seed"):
        SamplingParams(seed=seed)


def _one_row_reference(logits, params, generator):
    """The single-sequence sampler as it was before batching (softmax, nucleus cut, argmax(p / Exp(1)))."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    x = logits.double()
    probs = torch.softmax((x - x.max()) / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        cut = before >= params.top_p
        cut[0] = False
        sorted_p[cut] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return int(torch.argmax(probs / noise))


def test_batch_sampling_draws_what_each_request_draws_alone():
    from dsa.engine.sampling import sample_batch

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 300, generator=g) * 3
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.7, seed=3),
              SamplingParams(temperature=1.3, top_p=0.5, seed=4), SamplingParams(temperature=0.2, top_p=0.9, seed=5),
              SamplingParams(temperature=1.0, seed=6)]
    gens = [p.make_generator() for p in params]
    refs = [p.make_generator() for p in params]
    for _ in range(20):  # the generators advance identically in both, step after step
        got = sample_batch(logits, params, gens)
        want = [_one_row_reference(logits[b], p, refs[b]) for b, p in enumerate(params)]
        assert got == want


def test_logprobs_of():
    from dsa.engine.sampling import logprobs_of

    logits = torch.tensor([[0.0, 1.0, 2.0], [5.0, 0.0, 0.0]])
    out = logprobs_of(logits, [2, 1], [2, 0])
    ref = torch.log_softmax(logits.double(), -1)
    assert out[0].token_id == 2 and out[0].logprob == pytest.approx(float(ref[0, 2]))
    assert [t for t, _ in out[0].top] == [2, 1] and out[1].top == ()
    assert out[1].logprob == pytest.approx(float(ref[1, 1]))


@pytest.mark.parametrize("kwargs, word", [(dict(logprobs=21), "logprobs"), (dict(logprobs=-1), "logprobs"),
                                          (dict(stop_token_ids=[-1]), "stop_token_ids"),
                                          (dict(stop_token_ids="ab"), "stop_token_ids"),
                                          (dict(ignore_eos=1), "ignore_eos")])
def test_invalid_serving_sampling_fields(kwargs, word):
    with pytest.raises(InputError, match=word):
        SamplingParams(**kwargs)
