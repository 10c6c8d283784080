"""minGRU LM (Feng et al. 2024, arXiv:2410.01201): log-space parallel scan, layer, LM, sizing.

Tolerances: float64 comparisons of the parallel scan with a sequential loop use
``rtol = 1e-10``.  The scan's rounding error is about ``eps · max|a*|`` relative
(``a*`` = cumulative ``log a``, cancelled by the log-sum-exp): with ``a ≥ 0.01`` and
``T ≤ 64`` that is ``2.2e-16 · 64 · 4.6 ≈ 7e-14``, so 1e-10 leaves three orders of
margin while any wrong term (an off-by-one step, a missing ``h0``) is O(1e-2) or more.
The values compared are ≥ 0.01 in magnitude, so a relative tolerance is meaningful;
``atol`` covers the few entries that pass near zero when ``h0`` is negative.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from newllm.baselines.mingru import MinGRULayer, MinGRULM, g, log_g, match_mingru, parallel_scan_log
from newllm.baselines.training import NeuralTrainConfig, evaluate_stream, train_neural_lm
from newllm.model import count_parameters

RTOL64, ATOL64 = 1e-10, 1e-12
V_TOY, D_TOY = 40, 16


def _sequential_recurrence(a, b, h0=None):
    """``h_t = a_t h_{t-1} + b_t`` by a loop over dim 1 (``h_0`` = zeros when None)."""
    h = torch.zeros_like(a[:, 0]) if h0 is None else h0
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def _embeddings(seed=0, V=V_TOY, d=D_TOY):
    emb = torch.randn(V, d, generator=torch.Generator().manual_seed(seed))
    return emb / emb.norm(dim=1, keepdim=True)  # unit rows, as the pipeline's row_norm 1


def _markov_stream(n, seed):
    """next = 7·prev + {0, 1} (mod V): two equally likely successors, loss floor ln 2."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.int64)
    out[0] = 0
    steps = rng.integers(0, 2, size=n)
    for i in range(1, n):
        out[i] = (7 * out[i - 1] + steps[i]) % V_TOY
    return torch.from_numpy(out)


# ------------------------------------------------------------------------ scan


@pytest.mark.parametrize("h0_kind", ["none", "positive", "signed", "zero"])
def test_parallel_scan_equals_sequential_recurrence(h0_kind):
    gen = torch.Generator().manual_seed(1)
    B, T, H = 3, 64, 5
    a = 0.01 + 0.98 * torch.rand(B, T, H, generator=gen, dtype=torch.float64)  # a in (0, 1)
    b = 0.01 + torch.rand(B, T, H, generator=gen, dtype=torch.float64)  # b > 0
    h0 = {
        "none": None,
        "positive": 0.01 + torch.rand(B, H, generator=gen, dtype=torch.float64),
        "signed": torch.randn(B, H, generator=gen, dtype=torch.float64),
        "zero": torch.zeros(B, H, dtype=torch.float64),
    }[h0_kind]
    got = parallel_scan_log(a.log(), b.log(), h0)
    assert got.shape == (B, T, H) and got.dtype == torch.float64
    torch.testing.assert_close(got, _sequential_recurrence(a, b, h0), rtol=RTOL64, atol=ATOL64)


def test_parallel_scan_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(2)
    B, T, H = 2, 6, 3
    log_a = (0.05 + 0.9 * torch.rand(B, T, H, generator=gen, dtype=torch.float64)).log().requires_grad_()
    log_b = (0.1 + torch.rand(B, T, H, generator=gen, dtype=torch.float64)).log().requires_grad_()
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64).requires_grad_()
    # central differences in float64 with torch's default eps 1e-6 and atol 1e-5
    assert torch.autograd.gradcheck(parallel_scan_log, (log_a, log_b, h0))


def test_parallel_scan_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="share one"):
        parallel_scan_log(torch.zeros(2, 3, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="share one"):
        parallel_scan_log(torch.zeros(3), torch.zeros(3))


def test_log_g_is_log_of_g_and_g_is_positive_and_continuous():
    x = torch.linspace(-30, 30, 6001, dtype=torch.float64)
    assert bool((g(x) > 0).all())
    torch.testing.assert_close(log_g(x), g(x).log(), rtol=1e-12, atol=1e-12)
    zero = torch.zeros(1, dtype=torch.float64)
    assert g(zero).item() == 0.5 and g(-zero.new_full((1,), 1e-12)).item() == pytest.approx(0.5, abs=1e-12)
    # no NaN gradient from the branch that torch.where discards
    x = torch.tensor([-50.0, -1.0, 0.0, 1.0, 50.0], dtype=torch.float64, requires_grad=True)
    log_g(x).sum().backward()
    assert bool(torch.isfinite(x.grad).all())


# ------------------------------------------------------------------------ layer


def _layer64(in_dim=6, hidden=5, chunk_size=128, seed=3):
    torch.manual_seed(seed)
    return MinGRULayer(in_dim, hidden, chunk_size).double()


@pytest.mark.parametrize("chunk_size", [128, 7, 1])
@pytest.mark.parametrize("with_h0", [False, True])
def test_layer_parallel_forward_equals_step_by_step(chunk_size, with_h0):
    layer = _layer64(chunk_size=chunk_size)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 40, 6, generator=gen, dtype=torch.float64)
    h0 = torch.rand(3, 5, generator=gen, dtype=torch.float64) if with_h0 else None
    h, h_last = layer(x, h0)
    ref, ref_last = layer.sequential(x, h0)
    assert h.shape == (3, 40, 5) and h_last.shape == (3, 5)
    torch.testing.assert_close(h, ref, rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(h_last, ref_last, rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(h_last, h[:, -1], rtol=0, atol=0)  # the same tensor values
    assert bool((h > 0).all())  # g > 0 and h0 >= 0 keep the state positive


def test_layer_carried_state_across_halves_equals_one_pass():
    layer = _layer64(chunk_size=16)
    x = torch.randn(2, 50, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    whole, whole_last = layer(x)
    first, mid = layer(x[:, :23])
    second, last = layer(x[:, 23:], mid)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(last, whole_last, rtol=RTOL64, atol=ATOL64)


def test_layer_gradients_equal_the_sequential_versions():
    layer = _layer64(chunk_size=9)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 30, 6, generator=gen, dtype=torch.float64)
    h0 = torch.rand(2, 5, generator=gen, dtype=torch.float64)
    weights = torch.randn(2, 30, 5, generator=gen, dtype=torch.float64)  # a generic linear functional of h
    grads = []
    for method in (layer.forward, layer.sequential):
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        layer.zero_grad(set_to_none=True)
        h, last = method(xi, hi)
        ((h * weights).sum() + last.square().sum()).backward()
        grads.append([p.grad.clone() for p in layer.parameters()] + [xi.grad, hi.grad])
    for got, ref in zip(*grads):
        assert bool(torch.isfinite(got).all()) and bool((got != 0).any())
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_layer_refuses_bad_sizes_and_shapes():
    with pytest.raises(ValueError, match="hidden_size must be >= 1, got 0"):
        MinGRULayer(4, 0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        MinGRULayer(4, 3, chunk_size=0)
    layer = MinGRULayer(4, 3)
    with pytest.raises(ValueError, match=r"input must be \[B, T >= 1, 4\]"):
        layer(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match=r"h0 must be \[2, 3\]"):
        layer(torch.zeros(2, 5, 4), torch.zeros(2, 4))


# ------------------------------------------------------------------------ LM


def _lm(num_layers=2, hidden=12, dropout=0.0, chunk_size=128, seed=0):
    torch.manual_seed(seed)
    return MinGRULM(_embeddings(), hidden, dropout, num_layers=num_layers, chunk_size=chunk_size)


def test_lm_forward_shapes_and_finite_tied_loss():
    model = _lm(num_layers=2, dropout=0.1).train()
    tokens = torch.randint(V_TOY, (4, 10), generator=torch.Generator().manual_seed(7))
    hidden, state = model(tokens)
    assert hidden.shape == (4, 10, D_TOY) and hidden.dtype == torch.float32
    assert isinstance(state, tuple) and len(state) == 1 and state[0].shape == (2, 4, 12)
    logits = hidden @ model.embeddings.T  # the frozen tied head
    loss = F.cross_entropy(logits.reshape(-1, V_TOY), torch.roll(tokens, -1, 1).reshape(-1))
    assert math.isfinite(loss.item())
    assert abs(loss.item() - math.log(V_TOY)) < 1.0  # near uniform at init: unit-norm rows, LayerNorm readout
    # bf16 autocast (the trainer's bf16 precision): finite, state kept in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden, state = model(tokens, state)
    assert bool(torch.isfinite(hidden.float()).all()) and state[0].dtype == torch.float32


def test_lm_carried_state_and_stream_pass_equal_one_pass():
    model = _lm(num_layers=3, chunk_size=8).double().eval()
    stream = _markov_stream(61, 8)
    tokens = stream[None, :-1]
    with torch.no_grad():
        whole, (whole_state,) = model(tokens)
        first, state = model(tokens[:, :27])
        second, (last_state,) = model(tokens[:, 27:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(last_state, whole_state, rtol=RTOL64, atol=ATOL64)
    # the evaluation pass in windows of 16 tokens reproduces the single pass
    torch.testing.assert_close(model.stream_hidden(stream, window=16), whole[0], rtol=RTOL64, atol=ATOL64)


def test_lm_gradients_reach_every_parameter_and_equal_the_sequential_lm():
    model = _lm(num_layers=3, chunk_size=5).double()
    tokens = torch.randint(V_TOY, (2, 17), generator=torch.Generator().manual_seed(9))
    targets = torch.randint(V_TOY, (2, 17), generator=torch.Generator().manual_seed(10))
    state = (torch.rand(3, 2, 12, generator=torch.Generator().manual_seed(11), dtype=torch.float64),)

    def grads():
        model.zero_grad(set_to_none=True)
        hidden, _ = model(tokens, state)
        F.cross_entropy((hidden @ model.embeddings.T).reshape(-1, V_TOY), targets.reshape(-1)).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    parallel = grads()
    for layer in model.layers:  # the same LM with every layer run by its step loop
        layer.forward = layer.sequential
    sequential = grads()
    assert parallel.keys() == dict(model.named_parameters()).keys()
    for name, grad in parallel.items():
        assert bool(torch.isfinite(grad).all()) and bool((grad != 0).any()), name
        torch.testing.assert_close(grad, sequential[name], rtol=1e-9, atol=1e-12, msg=name)


def test_lm_refuses_bad_settings_and_keeps_embeddings_frozen():
    emb = _embeddings()
    with pytest.raises(ValueError, match="hidden_size must be >= 1, got 0"):
        MinGRULM(emb, 0)
    with pytest.raises(ValueError, match="num_layers must be >= 1, got 0"):
        MinGRULM(emb, 4, num_layers=0)
    with pytest.raises(ValueError, match=r"\[V, d_e\]"):
        MinGRULM(torch.zeros(2, 10, 8), 4)
    model = MinGRULM(emb.double(), 3)
    assert "embeddings" not in model.state_dict() and model.embeddings.dtype == torch.float32
    assert not any(p is model.embeddings for p in model.parameters())


def test_lm_trains_with_the_baseline_trainer():
    """The trainer's truncated-BPTT path (tuple state detached per window) lowers the dev loss."""
    torch.manual_seed(0)
    model = MinGRULM(_embeddings(), 24, num_layers=2)
    cfg = NeuralTrainConfig(
        learning_rate=1e-2,
        batch_size=4,
        seq_len=16,
        eval_every=20,
        patience=5,
        min_delta=0.0,
        min_steps=60,
        max_steps=60,
        chunk_tokens=64,
    )
    train, dev = _markov_stream(2000, 1), _markov_stream(400, 2)
    initial = evaluate_stream(model, dev, cfg.chunk_tokens)["loss"]  # the trainer has no step-0 evaluation
    result = train_neural_lm(model, train, dev, cfg, seed=0, stateful=True)
    assert initial > math.log(V_TOY) - 0.5  # about uniform at init
    assert result.summary["dev_loss"] < initial - 1.0  # ln 40 = 3.7 towards the floor ln 2
    assert evaluate_stream(model, dev, cfg.chunk_tokens)["loss"] == pytest.approx(result.summary["dev_loss"], rel=1e-5)


# ------------------------------------------------------------------------ sizing


def test_parameter_count_by_hand_and_against_built_modules():
    # d_e = 2, H = 3: minGRU 2·3·2 + 2·3 = 18, readout 3·2 + 2 + 2·2 = 12 -> 30;
    # each further layer: LayerNorm 2·3 + minGRU 2·3·3 + 2·3 = 30
    assert MinGRULM.parameter_count(2, 3) == 30
    assert MinGRULM.parameter_count(2, 3, num_layers=3) == 90
    emb = torch.randn(7, 2, generator=torch.Generator().manual_seed(12))
    for layers in (1, 3):
        model = MinGRULM(emb, 3, num_layers=layers)
        assert count_parameters(model) == sum(p.numel() for p in model.parameters()) == MinGRULM.parameter_count(2, 3, layers)
    assert count_parameters(MinGRULM(_embeddings(d=64), 100, num_layers=2)) == MinGRULM.parameter_count(64, 100, 2)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("embed_dim", [16, 64])
@pytest.mark.parametrize("target", [20_000, 300_000])
def test_match_mingru_is_closest_and_within_tolerance(target, embed_dim, num_layers):
    size = match_mingru(target, embed_dim, num_layers=num_layers)
    assert size.target == target and abs(size.relative_gap) <= 0.1
    assert size.parameters == MinGRULM.parameter_count(embed_dim, size.size, num_layers)
    gaps = [abs(MinGRULM.parameter_count(embed_dim, h, num_layers) / target - 1) for h in range(1, 10_000)]
    assert size.size == 1 + int(np.argmin(gaps))  # the brute-force best, first (smaller) on ties
    emb = _embeddings(d=embed_dim)
    with torch.device("meta"):  # no memory for the weights
        assert count_parameters(MinGRULM(emb.to("meta"), size.size, num_layers=num_layers)) == size.parameters


def test_match_mingru_refuses_unreachable_targets_naming_them():
    # d_e = 64, H = 1: 2·64 + 2 + 64 + 3·64 = 386 parameters at least; 100 is out of reach
    with pytest.raises(ValueError, match="no minGRU hidden size matches 100 trainable parameters within 10%"):
        match_mingru(100, 64)
    with pytest.raises(ValueError, match="parameter target must be >= 1, got 0"):
        match_mingru(0, 64)
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        match_mingru(1000, 64, num_layers=0)
    assert match_mingru(100, 64, tolerance=3.0).size == 1  # +286 %: accepted under a looser tolerance
