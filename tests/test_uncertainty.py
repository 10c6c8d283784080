"""Test-set bootstrap over conversations: expected values from the math, not from the code."""

import math
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from newllm.data import target_conversations
from newllm.uncertainty import (
    bootstrap_losses,
    bootstrap_study,
    conversation_sums,
    observed_losses,
    percentile_interval,
    reference_losses,
    resample_counts,
    seed_mean_points,
)


def test_conversation_sums_by_hand():
    # sample_end = 3, 5, 9: conversation 0 is tokens 0-2 with its separator at 3, conversation 1
    # token 4 with its separator at 5, conversation 2 tokens 6-8.  Targets t = 0..7 predict
    # positions 1..8: positions 1, 2, 3 -> conversation 0 (predicting its end is part of it);
    # 4, 5 -> 1; 6, 7, 8 -> 2
    sums, counts = conversation_sums(np.arange(8, dtype=np.float32), [3, 5, 9])
    assert counts.tolist() == [3, 2, 3]
    assert sums.tolist() == [0 + 1 + 2, 3 + 4, 5 + 6 + 7]
    with pytest.raises(ValueError, match="expected 8"):
        conversation_sums(np.ones(9), [3, 5, 9])
    with pytest.raises(ValueError, match="finite"):
        conversation_sums(np.r_[np.ones(7), np.nan], [3, 5, 9])
    with pytest.raises(ValueError, match="increasing"):
        conversation_sums(np.ones(8), [5, 3, 9])


def test_resample_counts_are_multinomial_and_deterministic_per_seed():
    a, b, c = resample_counts(50, 200, seed=3), resample_counts(50, 200, seed=3), resample_counts(50, 200, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert (a.sum(axis=1) == 50).all()
    # each unit is drawn Binomial(50, 1/50) times: mean 1, variance 49/50
    assert a.mean() == pytest.approx(1.0)
    assert a.var() == pytest.approx(49 / 50, rel=0.1)


def test_one_resample_is_the_ratio_of_weighted_sums():
    sums = np.array([[1.0, 2.0], [5.0, 4.0], [22.0, 30.0]])  # [K=3, R=2]
    counts = np.array([2, 2, 4])
    boot = bootstrap_losses(sums, counts, resamples=7, seed=11)
    w = resample_counts(3, 7, seed=11)  # the same draw
    expected = (w @ sums) / (w @ counts)[:, None]
    np.testing.assert_allclose(boot, expected)
    np.testing.assert_allclose(observed_losses(sums, counts), [28 / 8, 36 / 8])


def test_every_run_sees_the_same_resamples():
    # run 2 = run 1 + 0.1 nats on every token: its loss exceeds run 1's by exactly 0.1 in
    # every resample, which only holds if both columns use the same conversations
    rng = np.random.default_rng(0)
    ends = np.cumsum(rng.integers(5, 60, size=40))
    nll = rng.exponential(3.0, ends[-1] - 1)
    s1, counts = conversation_sums(nll, ends)
    s2, _ = conversation_sums(nll + 0.1, ends)
    boot = bootstrap_losses(np.column_stack([s1, s2]), counts, 500, seed=1)
    np.testing.assert_allclose(boot[:, 1] - boot[:, 0], 0.1, atol=1e-12)
    assert boot[:, 0].std() > 0.05  # while each run's loss itself varies


def _population(num_conversations, rng):
    lengths = rng.integers(20, 200, size=num_conversations)
    ends = np.cumsum(lengths)
    level = rng.normal(3.0, 0.5, size=num_conversations)  # conversations differ in difficulty
    conv = target_conversations(ends, ends[-1])
    nll = np.abs(level[conv] + rng.normal(0, 1.0, ends[-1] - 1))
    return conversation_sums(nll, ends)


def test_bootstrap_sd_matches_the_delta_method():
    # ratio estimator L = Σ s_k / Σ c_k under multinomial resampling of K units:
    # Var*(L*) ≈ Σ_k (s_k − L c_k)² / (Σ_k c_k)²  (linearisation; Σ_k (s_k − L c_k) = 0)
    sums, counts = _population(400, np.random.default_rng(1))
    loss = sums.sum() / counts.sum()
    delta_sd = math.sqrt(((sums - loss * counts) ** 2).sum()) / counts.sum()
    boot = bootstrap_losses(sums, counts, 4000, seed=2)[:, 0]
    assert boot.std(ddof=1) == pytest.approx(delta_sd, rel=0.06)
    assert boot.mean() == pytest.approx(loss, abs=0.2 * delta_sd)


def test_intervals_shrink_like_one_over_sqrt_of_the_test_set():
    rng = np.random.default_rng(2)
    widths = {}
    for k in (100, 1600):
        sums, counts = _population(k, rng)
        low, high = percentile_interval(bootstrap_losses(sums, counts, 2000, seed=0))
        widths[k] = float(high[0] - low[0])
    assert widths[100] / widths[1600] == pytest.approx(4.0, rel=0.2)  # sqrt(1600 / 100)


def test_percentile_interval_covers_the_true_loss_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    level = 3.0
    covered, trials = 0, 200
    for trial in range(trials):
        lengths = rng.integers(20, 80, size=150)
        ends = np.cumsum(lengths)
        conv = target_conversations(ends, ends[-1])
        nll = rng.exponential(level, ends[-1] - 1) * rng.lognormal(0, 0.3, 150)[conv] / math.exp(0.045)  # E = level
        sums, counts = conversation_sums(nll, ends)
        low, high = percentile_interval(bootstrap_losses(sums, counts, 400, seed=trial))
        covered += low[0] <= level <= high[0]
    assert 0.89 <= covered / trials <= 0.99


def test_thousand_resamples_of_300_runs_take_seconds():
    rng = np.random.default_rng(4)
    sums = rng.exponential(100.0, size=(2000, 300))  # 2,000 conversations, 300 runs
    counts = rng.integers(20, 200, size=2000)
    start = time.perf_counter()
    boot = bootstrap_losses(sums, counts, 1000, seed=0)
    elapsed = time.perf_counter() - start
    assert boot.shape == (1000, 300) and np.isfinite(boot).all()
    assert elapsed < 5.0, f"1,000 resamples took {elapsed:.2f} s"


def test_seed_means_are_loss_means_and_seed_resampling_draws_seeds():
    runs = pd.DataFrame(
        {
            "model": "m",
            "variant": "v",
            "context_dim": 8,
            "samples": [10, 10, 20],
            "seed": [0, 1, 0],
            "train_tokens": [100, 100, 200],
            "undertrained": [True, False, False],
        }
    )
    observed = np.array([2.0, 4.0, 1.5])
    # no test noise: every resample repeats the observed losses
    boot = np.tile(observed, (4000, 1))
    fixed, fixed_boot = seed_mean_points(
        runs, boot, observed, resample_seeds=False, mean_columns=["train_tokens"], count_columns=["undertrained"]
    )
    assert fixed["test_loss"].tolist() == [3.0, 1.5]  # mean in loss space
    assert fixed["test_ppl"].iloc[0] == pytest.approx(math.sqrt(math.exp(2.0) * math.exp(4.0)))  # geometric mean of PPL
    assert fixed["test_loss_seed_sd"].iloc[0] == pytest.approx(math.sqrt(2.0)) and math.isnan(fixed["test_loss_seed_sd"].iloc[1])
    assert fixed["undertrained_runs"].tolist() == [1, 0] and fixed["train_tokens"].tolist() == [100, 200]
    np.testing.assert_allclose(fixed_boot[:, 0], 3.0)
    _, drawn = seed_mean_points(runs, boot, observed, seed=5, resample_seeds=True)
    # two seeds drawn with replacement: means 2, 3, 4 with probabilities 1/4, 1/2, 1/4
    values, freq = np.unique(drawn[:, 0], return_counts=True)
    assert values.tolist() == [2.0, 3.0, 4.0]
    np.testing.assert_allclose(freq / freq.sum(), [0.25, 0.5, 0.25], atol=0.03)
    np.testing.assert_allclose(drawn[:, 1], 1.5)  # one seed: nothing to draw


def _write_runs(tmp_path, shifts, ends, rng):
    nll, rows = {}, []
    base = rng.exponential(3.0, ends[-1] - 1)
    for i, (model, shift) in enumerate(shifts.items()):
        path = tmp_path / f"results/s/runs/{model}/base/samples10_ctx8_seed0/phase2/test_token_nll.npy"
        values = (base + shift).astype(np.float32)
        nll[str(path)] = values
        rows.append(
            {
                "model": model,
                "variant": "base",
                "samples": 10,
                "context_dim": 8,
                "seed": 0,
                "test_loss": float(values.astype(np.float64).mean()),
                "train_tokens": 1000,
                "undertrained": False,
            }
        )
    return pd.DataFrame(rows), nll


def test_bootstrap_study_checks_the_contract(tmp_path):
    rng = np.random.default_rng(5)
    ends = np.cumsum(rng.integers(5, 40, size=30))
    runs, nll = _write_runs(tmp_path, {"cvfp": 0.0, "lstm": 0.2}, ends, rng)
    points, point_boot, intervals, info = bootstrap_study(runs, nll, ends.tolist(), resamples=300, seed=0)
    assert info["conversations"] == 30 and info["targets"] == ends[-1] - 1 and point_boot.shape == (300, 2)
    assert set(points["model"]) == {"cvfp", "lstm"}
    assert (intervals["test_ppl_ci_low"] < intervals["test_ppl"]).all() and (
        intervals["test_ppl"] < intervals["test_ppl_ci_high"]
    ).all()
    bad = runs.assign(test_loss=runs["test_loss"] + 0.01)
    with pytest.raises(ValueError, match="test_loss"):
        bootstrap_study(bad, nll, ends.tolist(), resamples=10)
    with pytest.raises(ValueError, match="without a test NLL"):
        bootstrap_study(runs, dict(list(nll.items())[:1]), ends.tolist(), resamples=10)


def test_conversation_sums_edge_cases():
    # one conversation; a flattened [1, n - 1] array; a conversation with only its separator
    # (ends 3, 4: position 4 is its separator); a last conversation with no target
    sums, counts = conversation_sums(np.ones((1, 4)), [5])
    assert sums.tolist() == [4.0] and counts.tolist() == [4] and counts.dtype == np.int64
    sums, counts = conversation_sums(np.arange(8.0), [3, 4, 9])
    assert counts.tolist() == [3, 1, 4] and sums.tolist() == [0 + 1 + 2, 3, 4 + 5 + 6 + 7]
    sums, counts = conversation_sums(np.arange(3.0), [3, 4])  # targets predict positions 1..3: all conversation 0
    assert counts.tolist() == [3, 0] and sums.tolist() == [3.0, 0.0]
    for ends in ([3, 3, 9], [[3, 5, 9]], []):
        with pytest.raises(ValueError, match="strictly increasing"):
            conversation_sums(np.ones(8), ends)


def test_resample_counts_bounds():
    assert resample_counts(1, 1, seed=0).tolist() == [[1]]
    for units, resamples in ((0, 5), (5, 0)):
        with pytest.raises(ValueError, match=">= 1 unit"):
            resample_counts(units, resamples, seed=0)


def test_bootstrap_losses_defaults_bounds_and_undefined_resamples():
    sums, counts = np.array([[2.0], [0.0]]), np.array([1, 0])  # conversation 1 has no target
    boot = bootstrap_losses(sums, counts, resamples=60)
    w = resample_counts(2, 60, seed=0)  # the default seed
    # a resample drawing conversation 0 (total count w0 >= 1, also exactly 1) has loss 2; one without it is undefined
    assert np.array_equal(np.isnan(boot[:, 0]), w[:, 0] == 0) and (w[:, 0] == 1).any() and (w[:, 0] == 0).any()
    np.testing.assert_allclose(boot[w[:, 0] > 0, 0], 2.0)
    assert bootstrap_losses(np.array([3.0]), np.array([1]), resamples=2).tolist() == [[3.0], [3.0]]  # one target
    with pytest.raises(ValueError, match="no targets"):
        bootstrap_losses(sums, np.array([0, 0]), resamples=2)
    with pytest.raises(ValueError, match="sums must be"):
        bootstrap_losses(sums, np.array([1, 0, 1]), resamples=2)


def test_observed_losses_of_one_run_is_a_vector():
    out = observed_losses(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 1]))
    assert out.shape == (1,) and out.tolist() == [2.0]


def test_percentile_interval_of_undefined_columns_is_nan_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = percentile_interval(np.full((10, 3), np.nan))
        assert low.shape == high.shape == (3,) and np.isnan(low).all() and np.isnan(high).all()
        low, high = percentile_interval(np.full((10, 3), np.nan), axis=1)
        assert low.shape == (10,) and np.isnan(high).all()
    mixed = np.column_stack([np.arange(101.0), np.full(101, np.nan)])  # one undefined column: NaN, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = percentile_interval(mixed)
    assert low[0] == pytest.approx(2.5) and high[0] == pytest.approx(97.5) and np.isnan(low[1]) and np.isnan(high[1])


def _seed_runs():
    # points (sorted by samples): 10 with one seed, 20 with two; rows deliberately unsorted
    return pd.DataFrame(
        {
            "model": "m",
            "variant": "v",
            "context_dim": 8,
            "samples": [20, 10, 20],
            "seed": [0, 0, 1],
            "train_tokens": [200, 100, 200],
            "undertrained": [False, True, True],
        },
        index=[7, 8, 9],
    )


def test_seed_mean_points_draw_seeds_only_where_there_are_several():
    import warnings

    runs = _seed_runs()
    rng = np.random.default_rng(1)
    boot = rng.normal(3.0, 0.1, size=(200, 3))
    observed = np.array([3.0, 2.0, 3.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one seed: SD undefined (NaN) without a degrees-of-freedom warning
        points, point_boot = seed_mean_points(runs, boot, observed, count_columns=["undertrained"])
    assert points["samples"].tolist() == [10, 20] and points["n_seeds"].tolist() == [1, 2]
    assert points["test_loss"].tolist() == [2.0, 3.25] and math.isnan(points["test_loss_seed_sd"].iloc[0])
    assert points["undertrained_runs"].tolist() == [1, 1]
    # the defaults: seed 0, seeds resampled; the one-seed point draws nothing from the generator
    draw = np.random.default_rng(0).integers(0, 2, size=(200, 2))
    np.testing.assert_allclose(point_boot[:, 0], boot[:, 1])
    np.testing.assert_allclose(point_boot[:, 1], np.take_along_axis(boot[:, [0, 2]], draw, axis=1).mean(axis=1))
    low, high = np.percentile(point_boot, [2.5, 97.5], axis=0)
    np.testing.assert_allclose(points["test_ppl_ci_low"], np.exp(low))
    np.testing.assert_allclose(points["test_ppl_ci_high"], np.exp(high))
    again, again_boot = seed_mean_points(runs, boot, observed, count_columns=["undertrained"])
    assert np.array_equal(again_boot, point_boot)
    # one key column: the group key is a scalar, not a tuple
    by_samples, _ = seed_mean_points(runs, boot, observed, keys=["samples"])
    assert by_samples["samples"].tolist() == [10, 20]
    with pytest.raises(ValueError, match="3 runs"):
        seed_mean_points(runs, boot[:, :2], observed)


def test_bootstrap_study_composes_its_steps_with_the_documented_seeds(tmp_path):
    from newllm.uncertainty import run_conversation_sums

    rng = np.random.default_rng(4)
    ends = np.cumsum(rng.integers(5, 30, size=20))
    nll, rows = {}, []
    for samples, seed, undertrained in ((10, 0, True), (10, 1, False), (20, 0, False)):
        path = tmp_path / f"results/s/runs/cvfp/base/samples{samples}_ctx8_seed{seed}/phase2/test_token_nll.npy"
        values = rng.exponential(3.0, ends[-1] - 1)
        nll[str(path)] = values
        row = {"model": "cvfp", "variant": "base", "samples": samples, "context_dim": 8, "seed": seed}
        rows.append(row | {"test_loss": values.mean(), "train_tokens": 50 * samples, "undertrained": undertrained})
    runs = pd.DataFrame(rows)
    t0 = time.perf_counter()
    points, point_boot, _, info = bootstrap_study(runs, nll, ends.tolist(), resamples=50, seed=3)
    elapsed = time.perf_counter() - t0
    keys, sums, counts = run_conversation_sums(runs, nll, ends.tolist())
    boot = bootstrap_losses(sums, counts, 50, 3)
    expected, expected_boot = seed_mean_points(
        runs, boot, observed_losses(sums, counts), seed=4, mean_columns=["train_tokens"], count_columns=["undertrained"]
    )
    np.testing.assert_allclose(point_boot, expected_boot)
    pd.testing.assert_frame_equal(points, expected)
    assert points["undertrained_runs"].tolist() == [1, 0] and points["train_tokens"].tolist() == [500.0, 1000.0]
    seconds = info.pop("seconds")
    assert 0 <= seconds <= elapsed
    assert info == {
        "resamples": 50,
        "seed": 3,
        "resample_seeds": True,
        "conversations": 20,
        "targets": int(ends[-1] - 1),
        "runs": 3,
        "points": 2,
    }
    # without seed resampling the points are the plain seed means of every resample
    _, plain, _, info = bootstrap_study(
        runs.drop(columns="undertrained"), nll, ends.tolist(), resamples=50, seed=3, resample_seeds=False
    )
    np.testing.assert_allclose(plain[:, 0], boot[:, :2].mean(axis=1))
    assert info["resample_seeds"] is False
    assert bootstrap_study(runs, nll, ends.tolist(), resamples=5)[3]["seed"] == 0  # the documented default


def test_a_test_loss_gap_of_exactly_the_tolerance_is_accepted():
    from newllm.uncertainty import check_test_losses

    check_test_losses([("m",)], np.array([1.0]), np.array([1.5]), 0.5)
    with pytest.raises(ValueError, match="1.500000"):
        check_test_losses([("m",)], np.array([1.0]), np.array([1.5]), 0.25)


def test_a_reference_model_is_resampled_on_the_same_conversation_draws_as_the_runs():
    rng = np.random.default_rng(3)
    sample_end = [5, 12, 20, 31, 41]  # 5 conversations of a 41-token stream (40 targets)
    a, b = rng.gamma(2.0, 1.0, 40), rng.gamma(2.0, 1.0, 40)
    sums = np.column_stack([conversation_sums(x, sample_end)[0] for x in (a, b)])
    counts = conversation_sums(a, sample_end)[1]
    both = bootstrap_losses(sums, counts, resamples=200, seed=7)
    observed, alone = reference_losses(b, sample_end, resamples=200, seed=7)
    np.testing.assert_allclose(alone, both[:, 1], rtol=1e-12)  # the same draws: pairs with run a
    assert observed == pytest.approx(b.sum() / 40)
    assert not np.allclose(reference_losses(b, sample_end, resamples=200, seed=8)[1], alone)


def test_no_runs_give_an_empty_points_table_and_an_all_nan_column_gives_no_interval():
    empty = pd.DataFrame(columns=["model", "variant", "context_dim", "samples", "seed", "test_loss"])
    points, point_boot = seed_mean_points(empty, np.empty((10, 0)), np.empty(0))
    assert len(points) == 0 and point_boot.shape == (10, 0) and "test_ppl_ci_low" in points
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "All-NaN slice" warning for an undefined column
        low, high = percentile_interval(np.array([[np.nan, 1.0], [np.nan, 3.0]]), 0.5)
    assert np.isnan(low[0]) and np.isnan(high[0]) and (low[1], high[1]) == (1.5, 2.5)
