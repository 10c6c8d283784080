"""Hierarchical bootstrap over seeds and test conversations, and paired gains: expected values
from the math, not from the code."""

import math
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from newllm.data import target_conversations
from newllm.paired_gains import (
    HEAD_GAIN_COLUMNS,
    PAIRED_GAIN_COLUMNS,
    bootstrap_study,
    gain_over_head,
    paired_difference,
    paired_gains_table,
)
from newllm.uncertainty import (
    bootstrap_losses,
    conversation_sums,
    observed_losses,
    percentile_interval,
    point_groups,
    reference_losses,
    resample_counts,
    run_conversation_sums,
    seed_draws,
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
    points, point_boot, intervals, info, *_ = bootstrap_study(runs, nll, ends.tolist(), resamples=300, seed=0)
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
    points, point_boot, _, info, head_boot, gains = bootstrap_study(runs, nll, ends.tolist(), resamples=50, seed=3)
    elapsed = time.perf_counter() - t0
    keys, sums, counts = run_conversation_sums(runs, nll, ends.tolist())
    boot = bootstrap_losses(sums, counts, 50, 3)
    expected, expected_boot = seed_mean_points(
        runs, boot, observed_losses(sums, counts), seed=4, mean_columns=["train_tokens"], count_columns=["undertrained"]
    )
    np.testing.assert_allclose(point_boot, expected_boot)
    pd.testing.assert_frame_equal(points.drop(columns=HEAD_GAIN_COLUMNS), expected)
    assert points[HEAD_GAIN_COLUMNS].isna().all().all() and head_boot.shape == (0,)  # no head LM given
    assert gains["comparison"].tolist() == []  # cvfp alone: nothing to pair, no head
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
    _, plain, _, info, *_ = bootstrap_study(
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


# ----------------------------------------------------------------------------- hierarchical bootstrap
def _study(specs):
    """runs table and NLL files of ``specs``: ``(model, samples, context_dim, seed, nll)``."""
    rows, nll = [], {}
    for model, samples, context_dim, seed, values in specs:
        run = {"model": model, "variant": "base", "samples": samples, "context_dim": context_dim, "seed": seed}
        nll[f"results/s/runs/{model}/base/samples{samples}_ctx{context_dim}_seed{seed}/phase2/test_token_nll.npy"] = values
        rows.append(run | {"test_loss": float(np.mean(values))})
    return pd.DataFrame(rows), nll


def _stream(rng, conversations=40):
    ends = np.cumsum(rng.integers(5, 50, size=conversations))
    return ends, rng.exponential(3.0, ends[-1] - 1)


def test_with_one_seed_the_hierarchical_bootstrap_is_exactly_the_conversation_bootstrap():
    rng = np.random.default_rng(10)
    ends, base = _stream(rng)
    specs = [(m, n, 8, 0, base * rng.uniform(0.5, 1.5)) for m in ("cvfp", "lstm") for n in (10, 20)]
    runs, nll = _study(specs)
    hierarchical = bootstrap_study(runs, nll, ends.tolist(), resamples=300, seed=6)
    conversations_only = bootstrap_study(runs, nll, ends.tolist(), resamples=300, seed=6, resample_seeds=False)
    _, sums, counts = run_conversation_sums(runs, nll, ends.tolist())
    boot = bootstrap_losses(sums, counts, 300, seed=6)  # points sort as the runs do here: cvfp 10, 20, lstm 10, 20
    assert np.array_equal(hierarchical.point_losses, boot)
    assert np.array_equal(conversations_only.point_losses, boot)
    low, high = percentile_interval(boot)
    np.testing.assert_array_equal(hierarchical.points["test_ppl_ci_low"], np.exp(low))
    np.testing.assert_array_equal(hierarchical.points["test_ppl_ci_high"], np.exp(high))


def test_the_interval_widens_when_seeds_disagree():
    rng = np.random.default_rng(11)
    ends, base = _stream(rng, 60)
    # point 10: two identical seeds; point 20: seed 1 is one nat worse on every token
    runs, nll = _study(
        [("cvfp", 10, 8, 0, base), ("cvfp", 10, 8, 1, base), ("cvfp", 20, 8, 0, base), ("cvfp", 20, 8, 1, base + 1.0)]
    )
    result = bootstrap_study(runs, nll, ends.tolist(), resamples=2000, seed=0)
    width = np.log(result.points["test_ppl_ci_high"]) - np.log(result.points["test_ppl_ci_low"])
    same = bootstrap_study(runs, nll, ends.tolist(), resamples=2000, seed=0, resample_seeds=False)
    same_width = np.log(same.points["test_ppl_ci_high"]) - np.log(same.points["test_ppl_ci_low"])
    # identical seeds: the seed draw changes nothing; disagreeing seeds: the mean over the
    # drawn seeds is base*, base* + 0.5 or base* + 1 (probabilities 1/4, 1/2, 1/4)
    np.testing.assert_allclose(result.point_losses[:, 0], same.point_losses[:, 0], rtol=1e-12)
    assert width[1] > same_width[1] + 0.5 and width[1] > width[0] + 0.5
    assert same_width[1] == pytest.approx(width[0], rel=1e-9)  # without the seed draw: the test set alone
    shift = result.point_losses[:, 1] - result.point_losses[:, 0]
    values, freq = np.unique(np.round(shift, 9), return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0]
    np.testing.assert_allclose(freq / freq.sum(), [0.25, 0.5, 0.25], atol=0.04)


def test_every_point_with_the_same_seeds_uses_the_same_seed_draw():
    # model b's seed s is model a's seed s plus 0.3 nats, and seeds differ by 0.5 s: the
    # difference of the points is 0.3 in every replicate only if both draw the same seeds
    rng = np.random.default_rng(12)
    ends, base = _stream(rng)
    specs = [
        (m, n, 8, s, base + 0.5 * s + (0.3 if m == "lstm" else 0.0))
        for m in ("cvfp", "lstm")
        for n in (10, 20)
        for s in (0, 1, 2)
    ]
    runs, nll = _study(specs)
    result = bootstrap_study(runs, nll, ends.tolist(), resamples=400, seed=2)
    losses = result.point_losses  # columns: cvfp 10, cvfp 20, lstm 10, lstm 20
    np.testing.assert_allclose(losses[:, 2] - losses[:, 0], 0.3, atol=1e-12)
    np.testing.assert_allclose(losses[:, 1], losses[:, 0], atol=1e-12)  # sizes too: the same seed labels drawn
    assert losses[:, 0].std() > 0.1  # while the seed draw moves each point


def test_seed_draws_one_per_seed_set_in_sorted_order_and_none_for_one_seed():
    draws = seed_draws([(0, 1, 2), (5,), (0, 1), (0, 1, 2)], resamples=50, seed=9)
    assert sorted(draws) == [(0, 1), (0, 1, 2)]
    rng = np.random.default_rng(9)
    np.testing.assert_array_equal(draws[(0, 1)], rng.integers(0, 2, size=(50, 2)))
    np.testing.assert_array_equal(draws[(0, 1, 2)], rng.integers(0, 3, size=(50, 3)))
    assert seed_draws([(3,)], 10, 0) == {}


def test_point_groups_order_seeds_by_label_and_refuse_repeats():
    runs = pd.DataFrame({"model": "m", "variant": "v", "context_dim": 8, "samples": 10, "seed": [2, 0, 1]})
    [(key, rows, seeds)] = point_groups(runs)
    assert key == ("m", "v", 8, 10) and rows.tolist() == [1, 2, 0] and seeds == (0, 1, 2)
    with pytest.raises(ValueError, match="more than once"):
        point_groups(runs.assign(seed=[0, 0, 1]))
    with pytest.raises(ValueError, match="'seed'"):
        point_groups(runs.drop(columns="seed"))


# ----------------------------------------------------------------------------- paired gains
def test_identical_models_differ_by_exactly_zero_and_a_shift_by_exactly_the_shift():
    rng = np.random.default_rng(13)
    ends, base = _stream(rng)
    specs = [
        (m, 10, 8, s, base + 0.2 * s + (0.25 if m == "lstm" else 0.0)) for m in ("cvfp", "reset_context", "lstm") for s in (0, 1)
    ]
    runs, nll = _study(specs)
    result = bootstrap_study(runs, nll, ends.tolist(), resamples=300, seed=1)
    cvfp, reset, lstm = ((m, "base", 8, 10) for m in ("cvfp", "reset_context", "lstm"))
    same = paired_difference(result.point_losses, result.points, reset, cvfp)
    assert same.observed == 0.0 and (same.replicates == 0.0).all() and same.ci_low == same.ci_high == 0.0
    shifted = paired_difference(
        result.point_losses, result.points, {"model": "lstm", "variant": "base", "context_dim": 8, "samples": 10}, cvfp
    )
    assert shifted.observed == pytest.approx(0.25, abs=1e-9)
    np.testing.assert_allclose([shifted.ci_low, shifted.ci_high], 0.25, atol=1e-12)
    assert shifted.replicates.shape == (300,)
    with pytest.raises(KeyError, match="no point"):
        paired_difference(result.point_losses, result.points, ("cvfp", "base", 16, 10), cvfp)
    with pytest.raises(ValueError, match="3 points"):
        paired_difference(result.point_losses[:, :2], result.points, lstm, cvfp)


def test_the_gain_over_the_head_is_paired_with_the_heads_conversation_draws():
    rng = np.random.default_rng(14)
    ends, head = _stream(rng)
    # every cvfp seed is the head plus 0.4 nats on every token; lstm equals the head
    runs, nll = _study([("cvfp", 10, 8, s, head + 0.4) for s in (0, 1, 2)] + [("lstm", 10, 8, 0, head)])
    result = bootstrap_study(runs, nll, ends.tolist(), resamples=300, seed=4, head_nll=head)
    head_loss, head_boot = reference_losses(head, ends.tolist(), 300, 4)
    assert result.info["head_loss"] == head_loss and np.array_equal(result.head_losses, head_boot)
    gains = result.points.set_index("model")[HEAD_GAIN_COLUMNS]
    np.testing.assert_allclose(gains.loc["cvfp"], -0.4, atol=1e-12)  # the constant, zero width
    np.testing.assert_allclose(gains.loc["lstm"], 0.0, atol=1e-12)
    assert result.head_losses.std() > 0.05  # while the head's own loss varies across replicates
    none = gain_over_head(result.points, result.point_losses, None, None)
    assert none.isna().all().all() and list(none.columns) == HEAD_GAIN_COLUMNS
    with pytest.raises(ValueError, match="head losses"):
        gain_over_head(result.points, result.point_losses, head_loss, head_boot[:10])


def test_paired_gains_table_lists_history_model_and_head_gains():
    rng = np.random.default_rng(15)
    ends, base = _stream(rng)
    shift = {"cvfp": 0.0, "reset_context": 0.3, "lstm": 0.1, "ngram": 0.5}
    specs = [(m, n, 8 if m != "ngram" else 0, 0, base + shift[m]) for m in shift for n in (10, 20)]
    specs += [("cvfp", 10, 16, 0, base + 0.05)]  # a context_dim no other model has
    runs, nll = _study(specs)
    result = bootstrap_study(runs, nll, ends.tolist(), resamples=200, seed=0, head_nll=base + 0.2)
    gains = result.paired_gains
    assert list(gains.columns) == PAIRED_GAIN_COLUMNS
    by = {(r.comparison, r.model, r.baseline, r.context_dim, r.samples): r for r in gains.itertuples()}
    # cvfp's history gain over reset_context and its gain over lstm at both sizes, context_dim 8
    for n in (10, 20):
        assert by[("history", "cvfp", "reset_context", 8, n)].gain == pytest.approx(0.3, abs=1e-9)
        row = by[("over_model", "cvfp", "lstm", 8, n)]
        assert row.gain == pytest.approx(0.1, abs=1e-9) and row.baseline_context_dim == 8
        assert row.gain_ci_low == pytest.approx(0.1, abs=1e-9) and row.ppl_ratio == pytest.approx(math.exp(0.1))
    # the head (0.2 worse than cvfp's base) against every point of a context or lm model
    assert by[("over_head", "lstm", "head", 8, 10)].gain == pytest.approx(0.1, abs=1e-9)
    assert by[("over_head", "cvfp", "head", 16, 10)].gain == pytest.approx(0.15, abs=1e-9)
    # a count model has no context_dim: every cvfp point pairs with it at 0, and so does the head
    for dim, n in ((8, 10), (8, 20), (16, 10)):
        row = by[("over_model", "cvfp", "ngram", dim, n)]
        assert row.baseline_context_dim == 0 and row.gain == pytest.approx(0.5 if dim == 8 else 0.45, abs=1e-9)
    assert by[("over_head", "ngram", "head", 0, 20)].gain == pytest.approx(-0.3, abs=1e-9)
    assert sorted(k[:3] for k in by if k[3] == 16) == [("over_head", "cvfp", "head"), ("over_model", "cvfp", "ngram")]
    assert gains["comparison"].tolist() == ["history"] * 2 + ["over_model"] * 5 + ["over_head"] * 9
    only_neural = paired_gains_table(result.points, result.point_losses, families=("context", "lm"))
    assert "ngram" not in set(only_neural["model"]) | set(only_neural["baseline"])
    no_head = paired_gains_table(result.points, result.point_losses)
    assert set(no_head["comparison"]) == {"history", "over_model"}
    assert len(paired_gains_table(result.points.iloc[:0], result.point_losses[:, :0])) == 0
