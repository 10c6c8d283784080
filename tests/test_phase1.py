import pytest
import torch

from newllm.model import ContextBlock, TokenInput, init_weights
from newllm.phase1 import (
    Phase1Config,
    TrainingDivergedError,
    context_cache_from_outputs,
    jacobi_sweep,
    solve_contexts_jacobi,
    solve_contexts_sequential,
    train_phase1,
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
    exact, _ = solve_contexts_sequential(block, token_input, stream)
    contexts = torch.randn(stream.shape[0], block.context_dim)  # any start
    for k in range(1, stream.shape[0] + 1):
        contexts = jacobi_sweep(block, token_input, stream, contexts, batch_size=5)
        # after k sweeps, positions < k are exact (they depend on the zero start only)
        assert torch.allclose(contexts[:k], exact[:k, -1], atol=1e-6)
    assert torch.allclose(contexts, exact[:, -1], atol=1e-6)


def test_solver_matches_sequential_and_reports_residual():
    block, token_input, stream = _setup(n=40)
    exact, _ = solve_contexts_sequential(block, token_input, stream)
    outputs, info = solve_contexts_jacobi(block, token_input, stream, max_sweeps=100, tolerance=1e-12, batch_size=16)
    assert info["method"] == "jacobi" and info["converged"] and info["sweeps"] <= 41
    assert torch.allclose(outputs, exact, atol=1e-6)


def test_context_cache_is_shifted_by_one_token():
    outputs = torch.arange(12.0).view(3, 2, 2)
    cache = context_cache_from_outputs(outputs)
    assert torch.equal(cache[0], torch.zeros(2, 2))
    assert torch.equal(cache[1:], outputs[:-1])


def _train(cfg, seed=3):
    block, token_input, stream = _setup(n=200, d_c=8, seed=1)
    return block, train_phase1(block, token_input, stream, cfg, seed=seed)


def test_phase1_is_deterministic_and_records_every_iteration():
    cfg = Phase1Config(max_iterations=25, min_iterations=5, batch_size=64, stop_convergence_rate=1.0)
    _, a = _train(cfg)
    _, b = _train(cfg)
    assert [r["total_loss"] for r in a.history] == [r["total_loss"] for r in b.history]
    assert len(a.history) == 25 and a.summary["stopped_by"] == "max_iterations"
    for r in a.history:
        assert r["tokens"] == 200 and 0 <= r["converged"] <= 200
        assert 1.0 <= r["effective_rank"] <= 8.0


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


def test_non_finite_loss_raises_with_context():
    block, token_input, stream = _setup(n=50)
    with torch.no_grad():
        block.layers[0].ffn[0].weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"Phase 1 runX: non-finite loss at iteration 1"):
        train_phase1(block, token_input, stream, Phase1Config(max_iterations=3), run_name="runX")


def test_validation_is_tracked_and_val_er_stop_rule_restores_best_weights():
    block, token_input, stream = _setup(n=200, d_c=8, seed=1)
    val = torch.randint(0, 30, (120,))
    cfg = Phase1Config(max_iterations=40, min_iterations=3, batch_size=64, stop_rule="val_er", er_patience=2)
    result = train_phase1(block, token_input, stream, cfg, val_stream=val, seed=0)
    h = result.history
    assert all(r["val_tokens"] == 120 and 0 <= r["val_converged"] <= 120 for r in h)
    best = max(h[cfg.min_iterations - 1 :], key=lambda r: r["val_effective_rank"])
    assert result.summary["best_iteration"] == best["iteration"]
    assert result.summary["val_effective_rank"] == best["val_effective_rank"]
    if result.summary["stopped_by"] == "val_er":
        assert len(h) - best["iteration"] == 2  # patience exhausted
    # the restored weights are those that produced the best iteration's contexts, i.e.
    # the weights after best_iteration - 1 Adam steps: replay that many steps and compare
    replay, token_input2, _ = _setup(n=200, d_c=8, seed=1)
    steps = best["iteration"] - 1
    if steps:
        train_phase1(replay, token_input2, stream, Phase1Config(max_iterations=steps, min_iterations=1, batch_size=64,
                                                                stop_convergence_rate=1.0), val_stream=val, seed=0)
    for (name, a), b in zip(block.state_dict().items(), replay.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="needs the validation stream"):
        train_phase1(block, token_input, stream, cfg)
