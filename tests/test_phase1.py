import math

import pytest
import torch

from newllm.losses import phase1_loss
from newllm.model import ContextBlock, TokenInput, init_weights
from newllm.phase1 import (
    Phase1Config,
    TrainingDivergedError,
    equal_batches,
    jacobi_sweep,
    solve_cache,
    start_stream,
    train_phase1,
    training_sweep,
)


def _setup(n=12, d_c=6, d_e=4, layers=1, n_in=1, seed=0):
    torch.manual_seed(seed)
    token_input = TokenInput(torch.randn(30, d_e), n_in)
    block = ContextBlock(d_c, token_input.output_dim, num_layers=layers)
    init_weights(block)
    stream = torch.randint(0, 30, (n,))
    return block, token_input, stream


@pytest.mark.parametrize("layers,n_in", [(1, 1), (2, 2)])
def test_jacobi_sweeps_reach_the_sequential_recurrence(layers, n_in):
    block, token_input, stream = _setup(layers=layers, n_in=n_in)
    exact, _ = solve_cache(block, token_input, stream, "sequential")
    contexts = torch.randn(stream.shape[0], block.context_dim)  # any start
    for k in range(1, stream.shape[0] + 1):
        contexts = jacobi_sweep(block, token_input, stream, contexts, batch_size=5)
        # after k sweeps, positions < k are exact (they depend on the zero start only)
        assert torch.allclose(contexts[:k], exact[:k, -1], atol=1e-6)
    assert torch.allclose(contexts, exact[:, -1], atol=1e-6)


@pytest.mark.parametrize("method", ["jacobi", "shooting"])
def test_cache_solvers_match_sequential_and_report_statistics(method):
    block, token_input, stream = _setup(n=40)
    exact, _ = solve_cache(block, token_input, stream, "sequential")
    outputs, info = solve_cache(block, token_input, stream, method, max_sweeps=100, tolerance=1e-12, batch_size=16)
    assert info["method"] == method and info["converged"] and info["tokens"] == 40 and info["seconds"] >= 0
    assert torch.allclose(outputs, exact, atol=1e-5)


@pytest.mark.parametrize("layers,n_in", [(1, 1), (2, 2)])
def test_cache_row_i_is_the_block_applied_to_the_previous_context_and_token_i(layers, n_in):
    # SPEC §6: cache[i] = F(c_{i-1}, x̃_i) for every layer, c_{-1} = 0
    block, token_input, stream = _setup(n=15, layers=layers, n_in=n_in)
    cache, info = solve_cache(block, token_input, stream, "jacobi", max_sweeps=100, tolerance=1e-12, batch_size=4)
    assert info["converged"] and "fallback_from" not in info
    with torch.no_grad():
        for i in range(stream.shape[0]):
            prev = cache[i - 1, -1:] if i else torch.zeros(1, block.context_dim)
            expected = block(prev, token_input(stream, torch.tensor([i])))[0]  # [L, d_c]
            assert torch.allclose(cache[i], expected, atol=1e-6), i


def test_cache_row_i_does_not_depend_on_token_i_plus_1():
    block, token_input, stream = _setup(n=20)
    cache, _ = solve_cache(block, token_input, stream, "sequential")
    for i in (0, 7, 18):
        changed = stream.clone()
        changed[i + 1] = (changed[i + 1] + 1) % 30
        other, _ = solve_cache(block, token_input, changed, "sequential")
        assert torch.equal(cache[: i + 1], other[: i + 1])
        assert not torch.allclose(cache[i + 1], other[i + 1])  # row i+1 does see token i+1


def test_a_cache_that_does_not_converge_is_solved_sequentially_and_recorded():
    block, token_input, stream = _setup(n=40)
    exact, _ = solve_cache(block, token_input, stream, "sequential")
    cache, info = solve_cache(block, token_input, stream, "jacobi", max_sweeps=3, tolerance=1e-12, batch_size=8)
    assert info["method"] == "sequential"
    assert info["fallback_from"]["method"] == "jacobi" and info["fallback_from"]["converged"] is False
    assert info["fallback_from"]["sweeps"] == 3 and info["fallback_from"]["residual"] > 1e-12
    assert torch.equal(cache, exact)
    with pytest.raises(ValueError, match="unknown context solver 'newton'"):
        solve_cache(block, token_input, stream, "newton")


@pytest.mark.parametrize("n,batch", [(9, 4), (4097, 4096), (10, 3), (5, 8)])
def test_equal_batches_cover_every_position_once_with_sizes_differing_by_at_most_one(n, batch):
    batches = equal_batches(n, batch)
    sizes = [b.numel() for b in batches]
    assert torch.equal(torch.cat(batches), torch.arange(n))
    assert len(batches) == -(-n // batch) and max(sizes) - min(sizes) <= 1 and max(sizes) <= batch


@pytest.mark.parametrize("diversity", ["odcm", "wmse", "mcdl"])
def test_n_mod_batch_size_of_one_keeps_every_loss_finite(diversity):
    # 9 tokens in batches of 4 used to leave a 1-token batch: ODCM/WMSE divide by n - 1
    block, token_input, stream = _setup(n=9, d_c=6)
    cfg = Phase1Config(max_iterations=3, min_iterations=1, batch_size=4, diversity=diversity, stop_convergence_rate=1.1)
    result = train_phase1(block, token_input, stream, cfg, seed=0)
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in result.history)
    # the first sweep's loss equals the token-weighted mean over the equal batches (5 + 4)
    block2, token_input2, _ = _setup(n=9, d_c=6)
    contexts = 0.01 * torch.randn(9, 6, generator=torch.Generator().manual_seed(0))
    expected = 0.0
    with torch.no_grad():
        for pos in equal_batches(9, 4):
            prev = torch.cat([torch.zeros(1, 6), contexts[:-1]])[pos]
            out = block2(prev, token_input2(stream, pos))[:, -1]
            expected += phase1_loss(out, contexts[pos], cfg.dist_reg_weight, diversity)[0].item() * pos.numel() / 9
    assert result.history[0]["total_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("layers,n_in,noise", [(1, 1, 0.0), (2, 2, 0.05)])
def test_training_sweep_on_embedded_windows_equals_embedding_every_batch(layers, n_in, noise):
    """The windows embedded once per run and sliced per batch give the same sweep, bit for
    bit, as embedding each batch's gathered positions (and the batches' bounds are theirs)."""
    block, token_input, stream = _setup(n=23, layers=layers, n_in=n_in)
    cfg = Phase1Config(batch_size=5, context_noise=noise)
    results = []
    for embed_once in (False, True):
        gen = torch.Generator().manual_seed(4)
        state = start_stream(stream, 6, cfg, gen, torch.device("cpu"), token_input if embed_once else None)
        assert (state.inputs is not None) is embed_once
        assert state.bounds == [(int(b[0]), int(b[-1]) + 1) for b in state.batches] and state.bounds[-1][1] == 23
        block.zero_grad()
        new, sums = training_sweep(block, token_input, state, cfg, gen)
        results.append((new, sums, [p.grad.clone() for p in block.parameters()]))
    (new_a, sums_a, grads_a), (new_b, sums_b, grads_b) = results
    assert torch.equal(new_a, new_b) and torch.equal(sums_a, sums_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    # row 0 read the zero context, row i the previous iterate's context of token i - 1
    contexts = start_stream(stream, 6, cfg, torch.Generator().manual_seed(4), torch.device("cpu")).contexts
    if noise == 0:
        with torch.no_grad():
            expected = block(torch.cat([torch.zeros(1, 6), contexts[:-1]]), token_input(stream, torch.arange(23)))[:, -1]
        assert torch.allclose(new_a, expected, atol=1e-6)


def _train(cfg, seed=3):
    block, token_input, stream = _setup(n=200, d_c=8, seed=1)
    return block, train_phase1(block, token_input, stream, cfg, seed=seed)


def test_phase1_is_deterministic_and_records_every_iteration():
    cfg = Phase1Config(max_iterations=25, min_iterations=5, batch_size=64, stop_convergence_rate=1.0)
    _, a = _train(cfg)
    _, b = _train(cfg)
    assert [r["total_loss"] for r in a.history] == [r["total_loss"] for r in b.history]
    assert len(a.history) == 25 and a.summary["stopped_by"] == "max_iterations"
    assert a.summary["undertrained"] is True and a.summary["stop_rule_met"] is False
    assert all(r["tokens"] == 200 for r in a.history)
    # ER is measured every er_every (5) iterations and at the last one
    assert [r["iteration"] for r in a.history if "effective_rank" in r] == [5, 10, 15, 20, 25]


def test_pure_cvfp_drives_contexts_to_a_fixed_point():
    # w = 0: only the fixed-point term; the sweep-to-sweep change must shrink and the
    # convergence rate rise (the contexts carry over between iterations)
    cfg = Phase1Config(max_iterations=30, batch_size=64, dist_reg_weight=0.0, stop_convergence_rate=1.0, learning_rate=1e-2)
    _, result = _train(cfg)
    h = result.history
    assert h[-1]["cvfp_loss"] < 0.2 * h[1]["cvfp_loss"]
    assert h[-1]["converged"] > 0.5 * h[-1]["tokens"] > h[1]["converged"]


def test_stop_rule_respects_minimum_iterations():
    # a stop rate of 0 is met at iteration 1; training must still run min_iterations
    cfg = Phase1Config(max_iterations=20, min_iterations=6, batch_size=64, stop_convergence_rate=1e-9)
    _, result = _train(cfg)
    assert result.summary["iterations"] == 6 and result.summary["stopped_by"] == "convergence_rate"
    assert result.summary["undertrained"] is False


def test_summary_describes_the_saved_weights():
    # the summary is measured by one more sweep with the final (saved) weights from the
    # last contexts; iteration 7 of a longer run computes its losses with exactly those
    # weights and contexts before its own step, so the two must agree
    cfg = Phase1Config(max_iterations=6, min_iterations=1, batch_size=64, stop_convergence_rate=1.1)
    _, six = _train(cfg)
    cfg7 = Phase1Config(max_iterations=7, min_iterations=1, batch_size=64, stop_convergence_rate=1.1)
    _, seven = _train(cfg7)
    seventh = seven.history[6]
    assert six.summary["final_cvfp_loss"] == pytest.approx(seventh["cvfp_loss"], rel=1e-5)
    assert six.summary["final_diversity_loss"] == pytest.approx(seventh["diversity_loss"], rel=1e-5)
    assert six.summary["train_convergence_rate"] == seventh["convergence_rate"]
    # and it is not the last record, which described the weights before the last step
    assert six.summary["final_cvfp_loss"] != pytest.approx(six.history[-1]["cvfp_loss"], rel=1e-6)


def test_non_finite_loss_raises_with_context():
    block, token_input, stream = _setup(n=50)
    with torch.no_grad():
        block.layers[0].ffn[0].weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"Phase 1 runX, iteration 1: non-finite loss nan"):
        train_phase1(block, token_input, stream, Phase1Config(max_iterations=3), run_name="runX")


def test_validation_is_tracked_and_val_er_stop_rule_restores_best_weights():
    block, token_input, stream = _setup(n=200, d_c=8, seed=1)
    val = torch.randint(0, 30, (120,))
    cfg = Phase1Config(max_iterations=40, min_iterations=3, batch_size=64, stop_rule="val_er", er_patience=2)
    result = train_phase1(block, token_input, stream, cfg, val_stream=val, seed=0)
    h = result.history
    assert all(r["val_tokens"] == 120 for r in h)
    best = max(h[cfg.min_iterations - 1 :], key=lambda r: r["val_effective_rank"])
    assert result.summary["best_iteration"] == best["iteration"]
    assert result.summary["stopped_by"] == "val_er"
    assert len(h) - best["iteration"] == 2  # patience exhausted
    # the restored weights are those that produced the best iteration's contexts, i.e.
    # the weights after best_iteration - 1 Adam steps: replay that many steps and compare
    replay, token_input2, _ = _setup(n=200, d_c=8, seed=1)
    steps = best["iteration"] - 1
    if steps:
        train_phase1(
            replay,
            token_input2,
            stream,
            Phase1Config(max_iterations=steps, min_iterations=1, batch_size=64, stop_convergence_rate=1.0),
            val_stream=val,
            seed=0,
        )
    for (name, a), b in zip(block.state_dict().items(), replay.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="needs the dev stream"):
        train_phase1(block, token_input, stream, cfg)


def test_stop_rules_traced_by_hand_and_their_state_round_trip():
    from newllm.phase1 import ConvergenceRateStop, ValERStop

    rate = ConvergenceRateStop(target=0.5, min_iterations=2)
    assert not rate.update({"iteration": 1, "convergence_rate": 0.9}, dict)  # before min_iterations
    assert rate.update({"iteration": 2, "convergence_rate": 0.5}, dict)  # the target itself suffices
    assert rate.state_dict() == {"stopped_by": "convergence_rate", "best_iteration": 2}
    resumed = ConvergenceRateStop(target=0.5, min_iterations=2)
    resumed.load_state_dict(rate.state_dict())
    assert resumed.state_dict() == rate.state_dict()

    er = ValERStop(patience=2, min_iterations=2)
    assert er.state_dict() == {"best_er": -math.inf, "best_iteration": 0, "stale": 0, "stopped_by": None}
    assert er.best_state is None
    weights = {"w": torch.zeros(2)}
    trace = []
    for iteration, value in ((1, 9.0), (2, 3.0), (3, 3.0), (4, 4.0), (5, 3.5)):
        stop = er.update({"iteration": iteration, "val_effective_rank": value}, lambda: weights)
        trace.append((er.best_iteration, er.stale, stop))
        weights["w"] += 1  # the kept state is a copy, not the live tensor
    # iteration 1 is no candidate; an equal ER (iteration 3) is no improvement
    assert trace == [(0, 0, False), (2, 0, False), (2, 1, False), (4, 0, False), (4, 1, False)]
    assert torch.equal(er.best_state["w"], torch.full((2,), 3.0))
    er.update({"iteration": 6, "val_effective_rank": 1.0}, dict)
    assert er.state_dict() == {"best_er": 4.0, "best_iteration": 4, "stale": 2, "stopped_by": "val_er"}
    again = ValERStop(patience=2, min_iterations=2)
    again.load_state_dict(er.state_dict())
    assert again.state_dict() == er.state_dict()


def test_phase1_config_from_dict_and_solve_cache_defaults():
    assert Phase1Config.from_dict({"batch_size": 8, "learning_rate": None, "unknown": 1}) == Phase1Config(batch_size=8)
    block, token_input, stream = _setup(n=30)
    exact, _ = solve_cache(block, token_input, stream, "sequential")
    cache, info = solve_cache(block, token_input, stream)
    assert info["method"] == "shooting" and info["tol"] == 1e-5 and info["converged"]
    assert torch.allclose(cache, exact, atol=1e-4)
    # a warm start is passed on to the solver: the exact answer converges in one Jacobi sweep
    warm, info = solve_cache(block, token_input, stream, "jacobi", init=exact[:, -1], tolerance=1e-10)
    assert info["sweeps"] == 1 and info["warm_start"] and torch.allclose(warm, exact, atol=1e-6)
