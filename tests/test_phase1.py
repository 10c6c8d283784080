import math
import time

import pytest
import torch

from newllm.context_cache import fallback_message, solve_cache
from newllm.losses import phase1_loss
from newllm.model import ContextBlock, ModelConfig, TokenInput, init_weights
from newllm.phase1 import (
    Phase1Config,
    TrainingDivergedError,
    equal_batches,
    jacobi_sweep,
    start_stream,
    train_phase1,
    training_sweep,
)


def _setup(n=12, d_c=6, d_e=4, layers=1, n_in=1, seed=0):
    torch.manual_seed(seed)
    token_input = TokenInput(torch.randn(30, d_e), n_in)
    block = ContextBlock(ModelConfig(d_c, d_e, num_input_tokens=n_in, num_layers=layers))
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
    # docs/method.md §6: cache[i] = F(c_{i-1}, x̃_i) for every layer, c_{-1} = 0
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
    # the export rule's warning names the failed method, tolerance, sweeps and residual
    residual = info["fallback_from"]["residual"]
    assert fallback_message(info) == (
        f"jacobi did not reach tolerance 1.0e-12 in 3 sweeps (residual {residual:.2e}): solved sequentially"
    )
    assert fallback_message(solve_cache(block, token_input, stream, "sequential")[1]) is None
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


# --- expected values from the definitions ---------------------


def test_phase1_config_defaults_are_the_schema_defaults():
    # the dataclass defaults are docs/method.md §4's as config/schema.yaml states them (er_max_rows: docs/method.md §5)
    from pathlib import Path

    from newllm.config import load_schema, section_defaults
    from newllm.metrics import ER_MAX_ROWS

    schema = load_schema(Path(__file__).resolve().parents[1] / "config" / "schema.yaml")
    assert Phase1Config() == Phase1Config(**section_defaults(schema, "phase1"), er_max_rows=ER_MAX_ROWS)


def test_previous_contexts_reads_row_i_minus_1_and_zero_for_position_0():
    from newllm.phase1 import previous_contexts

    contexts = torch.arange(1.0, 9.0).reshape(4, 2)  # rows [1,2], [3,4], [5,6], [7,8]
    out = previous_contexts(contexts, torch.tensor([2, 0, 3, 1]))
    assert torch.equal(out, torch.tensor([[3.0, 4.0], [0.0, 0.0], [5.0, 6.0], [1.0, 2.0]]))


def test_convergence_record_by_hand():
    from newllm.phase1 import convergence_record

    old = torch.zeros(4, 2)
    # per-token mean squared change: 0, 0.02, 0.03 (not below the threshold), 0.5
    new = torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.0, 0.06**0.5], [1.0, 0.0]])
    assert convergence_record(new, old, 0.03) == {
        "converged": 2,
        "tokens": 4,
        "convergence_rate": 0.5,
        "convergence": "50.0 % (2/4)",
    }
    keys = {"val_converged", "val_tokens", "val_convergence_rate", "val_convergence"}
    assert set(convergence_record(new, old, 0.6, "val_")) == keys
    assert convergence_record(new, old, 0.6, "val_")["val_converged"] == 4


def _sweep_reference(block, token_input, stream, contexts, batches, cfg):
    """One Jacobi sweep written out from the definition: new contexts and the token-weighted
    (total, cvfp, diversity) losses over ``batches``."""
    n = stream.shape[0]
    shifted = torch.cat([torch.zeros(1, contexts.shape[1]), contexts[:-1]])
    with torch.no_grad():
        new = block(shifted, token_input(stream, torch.arange(n)))[:, -1]
    losses = [0.0, 0.0, 0.0]
    for pos in batches:
        parts = phase1_loss(new[pos], contexts[pos], cfg.dist_reg_weight, cfg.diversity)
        losses = [acc + float(p) * pos.numel() / n for acc, p in zip(losses, parts)]
    return new, losses


def test_measure_sweep_is_one_sweep_with_token_weighted_losses_and_seeded_er():
    from newllm.metrics import convergence_counts, effective_rank
    from newllm.phase1 import measure_sweep

    block, token_input, stream = _setup(n=13, d_c=6)
    contexts = torch.randn(13, 6, generator=torch.Generator().manual_seed(2))
    cfg = Phase1Config(er_max_rows=7, convergence_threshold=2.0, diversity="odcm", dist_reg_weight=0.4)
    batches = equal_batches(13, 4)  # 4 + 3 + 3 + 3
    new, record = measure_sweep(block, token_input, stream, contexts, batches, cfg, seed=5, prefix="val_")
    expected, (total, cvfp, div) = _sweep_reference(block, token_input, stream, contexts, batches, cfg)
    assert torch.allclose(new, expected, atol=1e-6)
    # the token-weighted sums are accumulated in float64: bit for bit the same batch forwards summed in Python floats
    sums = [0.0, 0.0, 0.0]
    with torch.no_grad():
        for pos in batches:
            prev = torch.cat([torch.zeros(1, 6), contexts[:-1]])[pos]
            parts = phase1_loss(block(prev, token_input(stream, pos))[:, -1], contexts[pos], 0.4, "odcm")
            sums = [acc + float(p) * (pos.numel() / 13) for acc, p in zip(sums, parts)]
    assert [record["val_total_loss"], record["val_cvfp_loss"], record["val_diversity_loss"]] == sums
    assert record["val_total_loss"] == pytest.approx(total, rel=1e-5)
    assert record["val_cvfp_loss"] == pytest.approx(cvfp, rel=1e-5)
    assert record["val_diversity_loss"] == pytest.approx(div, rel=1e-5)
    conv, tokens = convergence_counts(new, contexts, 2.0)
    assert 0 < conv < tokens == 13 and record["val_converged"] == conv and record["val_convergence_rate"] == conv / 13
    # 7 of 13 rows sampled with the given seed (another seed samples other rows)
    assert record["val_effective_rank"] == effective_rank(new, 7, 5) != effective_rank(new, 7, 0)
    # a one-batch sweep gives the same contexts (the batching only splits the positions)
    one, _ = measure_sweep(block, token_input, stream, contexts, [torch.arange(13)], cfg, seed=5)
    assert torch.allclose(one, new, atol=1e-6)


def test_needs_er_every_er_every_iterations_at_the_last_one_and_always_for_val_er():
    from newllm.phase1 import Phase1Run

    run = Phase1Run(None, None, Phase1Config(er_every=3, max_iterations=7), None, None, 0, None)
    assert [i for i in range(1, 8) if run.needs_er(i)] == [3, 6, 7]
    run.cfg = Phase1Config(er_every=3, max_iterations=7, stop_rule="val_er")
    assert all(run.needs_er(i) for i in range(1, 8))


def test_phase1_summary_by_hand():
    from newllm.phase1 import ConvergenceRateStop, ValERStop, phase1_summary

    history = [{"iteration": 4, "seconds": 0.5}, {"iteration": 5, "seconds": 1.5}]
    final = {
        "cvfp_loss": 0.25,
        "diversity_loss": -0.5,
        "convergence_rate": 0.75,
        "convergence": "75.0 % (30/40)",
        "effective_rank": 3.0,
        "val_convergence_rate": 0.5,
        "val_convergence": "50.0 % (10/20)",
        "val_effective_rank": 2.0,
        "total_loss": 9.0,
    }
    budget = ConvergenceRateStop(0.99, 1)
    summary = phase1_summary(history, final, budget, Phase1Config(), {"iteration": 3}, n=40, context_dim=8)
    assert summary == {
        "iterations": 5,
        "best_iteration": 5,
        "stop_rule": "convergence_rate",
        "stopped_by": "max_iterations",
        "stop_rule_met": False,
        "undertrained": True,
        "resumed_from_iteration": 4,
        "final_cvfp_loss": 0.25,
        "final_diversity_loss": -0.5,
        "train_convergence_rate": 0.75,
        "train_convergence": "75.0 % (30/40)",
        "train_effective_rank": 3.0,
        "train_effective_rank_pct": 37.5,
        "val_convergence_rate": 0.5,
        "val_convergence": "50.0 % (10/20)",
        "val_effective_rank": 2.0,
        "seconds": 2.0,
        "tokens_per_s": 40.0,  # 40 tokens x 2 iterations in 2 s
        "precision": "fp32",
    }
    er = ValERStop(2, 1)
    er.best_iteration, er.stopped_by = 4, "val_er"
    no_dev = {k: v for k, v in final.items() if not k.startswith("val_")}
    other = phase1_summary(history, no_dev, er, Phase1Config(stop_rule="val_er"), None, 40, 8, "bf16")
    assert other["best_iteration"] == 4 and other["stopped_by"] == "val_er" and other["stop_rule_met"] is True
    assert other["undertrained"] is False and other["resumed_from_iteration"] is None and other["precision"] == "bf16"
    assert "val_effective_rank" not in other and other["stop_rule"] == "val_er"


def test_with_frozen_weights_every_record_describes_successive_jacobi_sweeps():
    """Learning rate 0: Adam never moves the weights, so iteration k's train contexts are
    k Jacobi sweeps from C^0 = init_std·N(0, I) (seed), the dev ones k sweeps from the
    seed + 1 draw, and every record and the summary follow from those sweeps."""
    from newllm.metrics import convergence_counts, effective_rank

    block, token_input, stream = _setup(n=20, d_c=6, seed=2)
    val = torch.randint(0, 30, (17,), generator=torch.Generator().manual_seed(9))
    cfg = Phase1Config(
        max_iterations=4, min_iterations=1, batch_size=8, learning_rate=0.0, stop_convergence_rate=1.1,
        er_every=3, er_max_rows=9, convergence_threshold=0.02, init_std=0.5,
    )  # fmt: skip
    seen = []
    t0 = time.perf_counter()
    result = train_phase1(block, token_input, stream, cfg, val_stream=val, seed=3, on_iteration=seen.append)
    assert 0 < sum(r["seconds"] for r in seen) <= time.perf_counter() - t0
    assert seen == result.history and [r["iteration"] for r in seen] == [1, 2, 3, 4]
    train = [0.5 * torch.randn(20, 6, generator=torch.Generator().manual_seed(3))]
    dev = [0.5 * torch.randn(17, 6, generator=torch.Generator().manual_seed(4))]
    rates = []
    for k, record in enumerate(result.history, start=1):
        new, (total, cvfp, div) = _sweep_reference(block, token_input, stream, train[-1], equal_batches(20, 8), cfg)
        new_val = jacobi_sweep(block, token_input, val, dev[-1], 5)
        assert record["total_loss"] == pytest.approx(total, rel=1e-5)
        assert record["cvfp_loss"] == pytest.approx(cvfp, rel=1e-5)
        assert record["diversity_loss"] == pytest.approx(div, rel=1e-5)
        assert (record["converged"], record["tokens"]) == convergence_counts(new, train[-1], 0.02)
        assert (record["val_converged"], record["val_tokens"]) == convergence_counts(new_val, dev[-1], 0.02)
        rates += [record["convergence_rate"], record["val_convergence_rate"]]
        train.append(new)
        dev.append(new_val)
        if k in (3, 4):  # er_every = 3, and the last iteration
            assert record["effective_rank"] == pytest.approx(effective_rank(new, 9, 3), rel=1e-6)
            assert record["val_effective_rank"] == pytest.approx(effective_rank(new_val, 9, 3), rel=1e-6)
        else:
            assert "effective_rank" not in record and "val_effective_rank" not in record
        assert record["tokens_per_s"] == pytest.approx(20 / record["seconds"])
    assert any(0 < r < 1 for r in rates)  # the threshold separates tokens
    # the summary is one more sweep of each stream with the (unchanged) weights
    final, (_, cvfp, div) = _sweep_reference(block, token_input, stream, train[-1], equal_batches(20, 8), cfg)
    final_val = jacobi_sweep(block, token_input, val, dev[-1], 5)
    s = result.summary
    assert torch.allclose(result.extra["contexts"], final, atol=1e-6)
    assert s["final_cvfp_loss"] == pytest.approx(cvfp, rel=1e-5) and s["final_diversity_loss"] == pytest.approx(div, rel=1e-5)
    conv, _ = convergence_counts(final, train[-1], 0.02)
    val_conv, _ = convergence_counts(final_val, dev[-1], 0.02)
    assert s["train_convergence_rate"] == conv / 20 and s["val_convergence_rate"] == val_conv / 17
    assert s["train_effective_rank"] == pytest.approx(effective_rank(final, 9, 3), rel=1e-6)
    assert s["val_effective_rank"] == pytest.approx(effective_rank(final_val, 9, 3), rel=1e-6)
    assert s["seconds"] == pytest.approx(sum(r["seconds"] for r in seen)) and s["precision"] == "fp32"
    assert s["iterations"] == 4 and s["resumed_from_iteration"] is None


def test_the_recorded_grad_norm_is_the_norm_of_the_sweeps_gradient_before_clipping():
    from newllm.phase1 import start_stream as start

    block, token_input, stream = _setup(n=20, d_c=6, seed=2)
    cfg = Phase1Config(max_iterations=1, min_iterations=1, batch_size=8, grad_clip=1e-3, learning_rate=0.0)
    state = start(stream, 6, cfg, torch.Generator().manual_seed(3), torch.device("cpu"), token_input)
    block.zero_grad()
    training_sweep(block, token_input, state, cfg, torch.Generator())
    norm = float(torch.cat([p.grad.flatten() for p in block.parameters()]).norm())
    result = train_phase1(block, token_input, stream, cfg, seed=3)
    assert norm > 1e-3 and result.history[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)


def test_training_sweep_with_context_noise_written_out_by_hand():
    """Each batch's previous contexts plus ``noise·N(0, I)`` drawn in batch order from the
    generator; the gradient is that of the token-weighted mean loss over the batches."""
    block, token_input, stream = _setup(n=11, d_c=6, seed=4)
    cfg = Phase1Config(batch_size=4, context_noise=0.3, dist_reg_weight=0.5)
    state = start_stream(stream, 6, cfg, torch.Generator().manual_seed(1), torch.device("cpu"), token_input)
    block.zero_grad()
    new, sums = training_sweep(block, token_input, state, cfg, torch.Generator().manual_seed(8))
    grads = [p.grad.clone() for p in block.parameters()]

    gen, contexts = torch.Generator().manual_seed(8), state.contexts
    shifted = torch.cat([torch.zeros(1, 6), contexts[:-1]])
    block.zero_grad()
    outs, objective, expected = [], 0.0, torch.zeros(3, dtype=torch.float64)
    for pos in equal_batches(11, 4):  # 4 + 4 + 3
        out = block(shifted[pos] + 0.3 * torch.randn(pos.numel(), 6, generator=gen), token_input(stream, pos))[:, -1]
        parts = phase1_loss(out, contexts[pos], 0.5, cfg.diversity)
        objective = objective + parts[0] * pos.numel() / 11
        expected += torch.stack(parts).detach().double() * pos.numel() / 11
        outs.append(out.detach())
    objective.backward()
    assert torch.allclose(new, torch.cat(outs), atol=1e-6) and torch.allclose(sums, expected, rtol=1e-6)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, block.parameters()))
    # without noise the generator is never drawn from (its state is checkpointed for resumes)
    quiet, gen = Phase1Config(batch_size=4), torch.Generator().manual_seed(8)
    before = gen.get_state()
    training_sweep(block, token_input, state, quiet, gen)
    assert torch.equal(gen.get_state(), before)


def test_start_phase1_draws_train_contexts_from_seed_and_dev_contexts_from_seed_plus_one():
    from newllm.phase1 import start_phase1

    block, token_input, stream = _setup(n=10, d_c=6)
    val = torch.randint(0, 30, (7,))
    cfg = Phase1Config(init_std=0.2, learning_rate=0.125, batch_size=4)
    run = start_phase1(block, token_input, stream, val, cfg, seed=5, precision="bf16")
    assert torch.equal(run.train.contexts, 0.2 * torch.randn(10, 6, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(run.dev.contexts, 0.2 * torch.randn(7, 6, generator=torch.Generator().manual_seed(6)))
    assert torch.equal(run.dev.stream, val) and [b.tolist() for b in run.dev.batches] == [[0, 1, 2, 3], [4, 5, 6]]
    assert run.train.inputs is not None and run.dev.inputs is None and run.dev_map.n == 7
    assert run.seed == 5 and run.precision == "bf16" and run.optimizer.param_groups[0]["lr"] == 0.125
    # the noise generator continues after the train draw
    gen = torch.Generator().manual_seed(5)
    torch.randn(10, 6, generator=gen)
    assert torch.equal(run.gen.get_state(), gen.get_state())
    plain = start_phase1(block, token_input, stream, None, cfg, seed=5)
    assert plain.dev is None and plain.precision == "fp32"
    with pytest.raises(ValueError, match="phase1.stop_rule 'patience' is not one of"):
        start_phase1(block, token_input, stream, val, Phase1Config(stop_rule="patience"), seed=5)


def test_inputs_are_embedded_once_up_to_the_cache_limit_inclusive(monkeypatch):
    import newllm.phase1 as phase1

    block, token_input, stream = _setup(n=10, d_c=6, n_in=2)  # 10 tokens x 8 = 80 elements
    cfg = Phase1Config(batch_size=4)
    monkeypatch.setattr(phase1, "INPUT_CACHE_MAX_ELEMENTS", 80)
    state = start_stream(stream, 6, cfg, torch.Generator(), torch.device("cpu"), token_input)
    assert torch.equal(state.inputs, token_input(stream, torch.arange(10)))
    monkeypatch.setattr(phase1, "INPUT_CACHE_MAX_ELEMENTS", 79)
    assert start_stream(stream, 6, cfg, torch.Generator(), torch.device("cpu"), token_input).inputs is None


def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path):
    """Killed after the checkpoint of iteration 4 (every 2 iterations, never at the last),
    the resumed run continues from iteration 5 with the saved contexts, dev contexts,
    noise generator, weights and optimizer, and ends with the same numbers."""
    from newllm.checkpoint import CheckpointSpec

    cfg = Phase1Config(max_iterations=6, min_iterations=1, batch_size=8, stop_convergence_rate=1.1, context_noise=0.1)
    val = torch.randint(0, 30, (12,), generator=torch.Generator().manual_seed(5))

    def run(spec):
        block, token_input, stream = _setup(n=20, d_c=6, seed=1)
        return block, train_phase1(block, token_input, stream, cfg, val_stream=val, seed=2, checkpoint=spec)

    saves = []
    block, whole = run(CheckpointSpec(tmp_path / "a.safetensors", "x", every=2, on_save=saves.append))
    assert saves == [2, 4]

    def kill(records):
        if records == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(CheckpointSpec(tmp_path / "b.safetensors", "x", every=2, on_save=kill))
    resumed_block, resumed = run(CheckpointSpec(tmp_path / "b.safetensors", "x", every=2))
    assert resumed.summary["resumed_from_iteration"] == 5 and whole.summary["resumed_from_iteration"] is None
    timing = {"seconds", "tokens_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed.history] == [
        {k: v for k, v in r.items() if k not in timing} for r in whole.history
    ]
    assert {k: v for k, v in resumed.summary.items() if k not in timing | {"resumed_from_iteration"}} == {
        k: v for k, v in whole.summary.items() if k not in timing | {"resumed_from_iteration"}
    }
    assert torch.equal(resumed.extra["contexts"], whole.extra["contexts"])
    assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), resumed_block.state_dict().values()))


def test_a_non_finite_loss_names_the_last_finite_record():
    block, token_input, stream = _setup(n=20)

    def poison_after(iteration):  # the weights become NaN after this iteration's step: the next one diverges
        def poison(record):
            if record["iteration"] == iteration:
                with torch.no_grad():
                    block.layers[0].ffn[0].weight.fill_(float("nan"))

        return poison

    cfg = Phase1Config(max_iterations=5, min_iterations=1, batch_size=8, stop_convergence_rate=1.1)
    message = r"^Phase 1 , iteration 3: non-finite loss nan; last finite values: \[\{'iteration': 2,"
    with pytest.raises(TrainingDivergedError, match=message) as err:
        train_phase1(block, token_input, stream, cfg, on_iteration=poison_after(2))
    assert "'iteration': 1," not in str(err.value)
    block, token_input, stream = _setup(n=20)
    message = r"^Phase 1 , iteration 2: non-finite loss nan; last finite values: \[\{'iteration': 1,"
    with pytest.raises(TrainingDivergedError, match=message):
        train_phase1(block, token_input, stream, cfg, on_iteration=poison_after(1))
    block, token_input, stream = _setup(n=20)
    block.layers[0].ffn[0].weight.data.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"iteration 1: non-finite loss nan; last finite values: None$"):
        train_phase1(block, token_input, stream, cfg)


def test_a_fresh_convergence_rate_stop_has_seen_no_iteration():
    from newllm.phase1 import ConvergenceRateStop

    assert ConvergenceRateStop(0.5, 2).state_dict() == {"stopped_by": None, "best_iteration": 0}


def test_final_measurement_reports_no_dev_losses():
    from newllm.phase1 import final_measurement, start_phase1

    block, token_input, stream = _setup(n=12, d_c=6)
    run = start_phase1(block, token_input, stream, torch.randint(0, 30, (9,)), Phase1Config(batch_size=5), seed=1)
    _, final = final_measurement(run)
    train_keys = {"total_loss", "cvfp_loss", "diversity_loss", "converged", "tokens", "convergence_rate", "convergence"}
    dev_keys = {"val_converged", "val_tokens", "val_convergence_rate", "val_convergence", "val_effective_rank"}
    assert set(final) == train_keys | dev_keys | {"effective_rank"} and final["val_tokens"] == 9


def test_phase1_iteration_returns_the_pre_step_weights_only_for_val_er():
    from newllm.phase1 import phase1_iteration, start_phase1

    block, token_input, stream = _setup(n=12, d_c=6)
    val = torch.randint(0, 30, (9,))
    run = start_phase1(block, token_input, stream, val, Phase1Config(batch_size=5), seed=1)
    assert phase1_iteration(run, 1, "x", None)[1] is None
    run = start_phase1(block, token_input, stream, val, Phase1Config(batch_size=5, stop_rule="val_er"), seed=1)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    _, kept = phase1_iteration(run, 1, "x", None)
    assert all(torch.equal(kept[k], v) for k, v in before.items())
    assert not all(torch.equal(v, block.state_dict()[k]) for k, v in before.items())  # the step moved the weights


def test_bf16_training_sweeps_run_the_block_under_autocast():
    """``precision='bf16'``: each training sweep is the bf16 sweep (the dev sweeps and the
    final measurement stay float32), and the summary says so."""
    from newllm.phase1 import start_stream as start

    block, token_input, stream = _setup(n=12, d_c=6)
    cfg = Phase1Config(max_iterations=1, min_iterations=1, batch_size=5, learning_rate=0.0)
    state = start(stream, 6, cfg, torch.Generator().manual_seed(2), torch.device("cpu"), token_input)
    _, bf16 = training_sweep(block, token_input, state, cfg, torch.Generator(), "bf16")
    _, fp32 = training_sweep(block, token_input, state, cfg, torch.Generator())
    result = train_phase1(block, token_input, stream, cfg, seed=2, precision="bf16")
    assert result.history[0]["total_loss"] == bf16[0].item() != fp32[0].item()
    assert result.summary["precision"] == "bf16"


def test_a_run_embedding_every_batch_equals_one_embedding_the_stream_once(monkeypatch):
    import newllm.phase1 as phase1

    cfg = Phase1Config(max_iterations=3, min_iterations=1, batch_size=5, stop_convergence_rate=1.1, context_noise=0.05)
    histories = []
    for limit in (phase1.INPUT_CACHE_MAX_ELEMENTS, 0):  # 0: nothing cached, windows embedded per batch
        monkeypatch.setattr(phase1, "INPUT_CACHE_MAX_ELEMENTS", limit)
        block, token_input, stream = _setup(n=12, d_c=6, n_in=2)
        result = train_phase1(block, token_input, stream, cfg, seed=4)
        histories.append([r["total_loss"] for r in result.history] + [result.summary["final_cvfp_loss"]])
    assert histories[0] == histories[1]


def test_the_default_seed_is_0():
    cfg = Phase1Config(max_iterations=1, min_iterations=1, batch_size=5)
    losses = []
    for kwargs in ({}, {"seed": 0}, {"seed": 1}):
        block, token_input, stream = _setup(n=12, d_c=6)
        losses.append(train_phase1(block, token_input, stream, cfg, **kwargs).history[0]["total_loss"])
    assert losses[0] == losses[1] != losses[2]


def test_solve_cache_passes_its_tolerance_and_sweep_budget_to_the_solver():
    block, token_input, stream = _setup(n=3)
    _, info = solve_cache(block, token_input, stream, "jacobi", tolerance=0.0)  # never met: the whole budget runs
    assert info["fallback_from"]["sweeps"] == 400 and info["fallback_from"]["tol"] == 0.0
    _, info = solve_cache(block, token_input, stream, "jacobi", max_sweeps=7, tolerance=1e-12)
    assert info["tol"] == 1e-12 and info["converged"] and info["sweeps"] <= 4  # exact after n = 3 sweeps
