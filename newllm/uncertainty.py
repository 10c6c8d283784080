"""Test-set bootstrap over conversations (issue 9, "Uncertainty").  No torch import.

The unit of resampling is a test **conversation**, not a token: tokens of one conversation
are strongly dependent (topic, speaker, the recurrent state carried along), so a token
bootstrap would give intervals that are far too narrow.  Every run of a study is scored
on the same test stream; a run's test loss is

    L_r = Σ_k S[k, r] / Σ_k C[k]          (nats per target token)

with ``S[k, r]`` the NLL sum of run ``r`` over the targets of conversation ``k`` and
``C[k]`` the number of those targets (the same for every run).  One bootstrap resample
draws K conversations with replacement, i.e. a count vector ``w ~ Multinomial(K, 1/K)``,
and every run's loss on it is ``L*_r = (w @ S)[r] / (w @ C)``.  All runs use the **same**
``w`` in a resample, so intervals of differences and ratios between runs carry the
correlation from the shared test set (efron & tibshirani 1993, ch. 6; the paired
bootstrap of koehn 2004 for MT metrics is the same idea).  With ``B`` resamples this is
one ``[B, K] @ [K, R]`` product, computed in chunks of rows.

Training seeds are a second source of variance.  :func:`seed_mean_points` averages the
seeds of each (model, variant, context_dim, samples) point in loss space (= the
geometric mean of the seeds' PPL) and, with ``resample_seeds=True``, also draws the
seeds with replacement in every resample (independently per point), so the intervals
carry the seed spread too.  With ``n`` seeds the seed bootstrap underestimates the seed
variance of the mean by the factor ``(n − 1)/n`` (2/3 for 3 seeds); with one seed it adds
nothing and the intervals reflect the test set only.

Intervals are 95 % percentile intervals of the bootstrap distribution.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from newllm.data import target_conversations
from newllm.study import RUN_KEYS, RunId

DEFAULT_RESAMPLES = 1000
POINT_KEYS = ["model", "variant", "context_dim", "samples"]
"""One scaling point: a configuration at one training size (seeds averaged)."""


def conversation_sums(token_nll: np.ndarray, sample_end: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-conversation NLL sums and target counts of one run's test token NLL.

    Args:
        token_nll: ``[n - 1]`` float, entry ``t`` = −ln p(test[t+1] | test[..t]) in nats
            (the run's ``test_token_nll.npy``).
        sample_end: ``[K]`` end of each conversation's own tokens in the test stream of
            ``n = sample_end[-1]`` tokens (``test.json``; the separator after conversation
            k sits at ``sample_end[k]``).  Target ``t`` (predicting position ``t + 1``) is
            assigned by :func:`newllm.data.target_conversations`: the conversation holding
            that position, the separator counting as the conversation it ends.

    Returns:
        ``(sums [K] float64 nats, counts [K] int64 targets)``.

    Raises:
        ValueError: ``token_nll`` is not ``sample_end[-1] − 1`` long, or holds a
            non-finite or negative value.
    """
    nll = np.asarray(token_nll, dtype=np.float64).reshape(-1)
    ends = np.asarray(sample_end, dtype=np.int64)
    if ends.ndim != 1 or ends.size == 0 or (np.diff(ends) <= 0).any():
        raise ValueError("sample_end must be a non-empty, strictly increasing list of positions")
    if nll.size != ends[-1] - 1:
        raise ValueError(f"test token NLL has {nll.size} entries, expected {ends[-1] - 1} (test stream of {ends[-1]} tokens)")
    if not np.isfinite(nll).all() or (nll < 0).any():
        raise ValueError("test token NLL must be finite and >= 0 (nats)")
    conv = target_conversations(ends, int(ends[-1]))
    sums = np.bincount(conv, weights=nll, minlength=ends.size)
    counts = np.bincount(conv, minlength=ends.size).astype(np.int64)
    return sums, counts


def resample_counts(num_units: int, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap count matrix ``[resamples, num_units]`` int64: row ``b`` says how often
    each unit is drawn in resample ``b`` (``Multinomial(num_units, 1/num_units)``, rows sum
    to ``num_units``).  Deterministic for a given ``seed``."""
    if num_units < 1 or resamples < 1:
        raise ValueError(f"need >= 1 unit and >= 1 resample, got {num_units} and {resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_units, np.full(num_units, 1.0 / num_units), size=resamples)


def bootstrap_losses(
    sums: np.ndarray, counts: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, chunk: int = 256
) -> np.ndarray:
    """Test loss of every run on every bootstrap resample of the conversations.

    Args:
        sums: ``[K, R]`` per-conversation NLL sums of R runs (nats).
        counts: ``[K]`` targets per conversation (shared by all runs).
        resamples: B.
        seed: the resample indices depend on it alone (and on K), not on R or ``chunk``.
        chunk: resamples per matrix product.  The ``[B, K]`` count matrix itself is drawn
            at once (``8·B·K`` bytes: 1.6 MB for 1,000 resamples of 200 conversations).

    Returns:
        ``[B, R]`` float64 mean NLL per target on each resample; column ``r`` row ``b``
        uses the same conversation draw for every ``r``.

    Raises:
        ValueError: shapes disagree, or no targets.
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if sums.ndim == 1:
        sums = sums[:, None]
    if sums.ndim != 2 or counts.shape != (sums.shape[0],):
        raise ValueError(f"sums must be [K, R] and counts [K], got {sums.shape} and {counts.shape}")
    if counts.sum() <= 0:
        raise ValueError("the test set has no targets")
    weights = resample_counts(sums.shape[0], resamples, seed).astype(np.float64)  # [B, K]
    out = np.empty((resamples, sums.shape[1]))
    for start in range(0, resamples, chunk):
        w = weights[start : start + chunk]
        denom = w @ counts  # [b]
        denom[denom == 0] = np.nan  # a resample of only target-free conversations: undefined
        out[start : start + chunk] = (w @ sums) / denom[:, None]
    return out


def observed_losses(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[R]`` test loss of every run on the full test set: ``Σ_k S[k, r] / Σ_k C[k]``."""
    sums = np.asarray(sums, dtype=np.float64)
    return (sums if sums.ndim == 2 else sums[:, None]).sum(axis=0) / float(np.sum(counts))


def percentile_interval(samples: np.ndarray, confidence: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval ``(low, high)`` of bootstrap ``samples`` along ``axis``
    (NaN resamples ignored; all-NaN gives NaN)."""
    tail = 100 * (1 - confidence) / 2
    samples = np.asarray(samples, dtype=np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)  # a column without an interval: NaN
        if np.isnan(samples).all():
            shape = np.delete(np.array(samples.shape), axis)
            nan = np.full(tuple(shape), np.nan)
            return nan, nan.copy()
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=axis)
    return low, high


def seed_mean_points(
    runs: pd.DataFrame,
    boot: np.ndarray,
    observed: np.ndarray,
    seed: int = 0,
    resample_seeds: bool = True,
    keys: Sequence[str] = POINT_KEYS,
    mean_columns: Sequence[str] = (),
    count_columns: Sequence[str] = (),
) -> tuple[pd.DataFrame, np.ndarray]:
    """Average the seeds of each point in loss space, on the data and on every resample.

    Args:
        runs: one row per run (column order of ``boot``) with the ``keys`` columns.
        boot: ``[B, R]`` bootstrap test losses (:func:`bootstrap_losses`).
        observed: ``[R]`` test losses on the full test set.
        seed: seeds the draw of training seeds (independent per point).
        resample_seeds: draw each point's seeds with replacement in every resample.
        mean_columns: further ``runs`` columns averaged over seeds (e.g. ``train_tokens``,
            ``dev_loss``, ``test_accuracy``, ``parameters``, ``train_flops``).
        count_columns: boolean ``runs`` columns counted over seeds as ``{column}_runs``
            (e.g. ``undertrained`` -> ``undertrained_runs``).

    Returns:
        ``(points, point_boot)``: ``points`` has one row per distinct ``keys`` (sorted),
        with ``n_seeds``, ``test_loss`` (mean over seeds), ``test_loss_seed_sd`` (sample SD
        over seeds, NaN for one seed), ``test_ppl = exp(test_loss)`` and its 95 %
        percentile interval ``test_ppl_ci_low/high``, and the mean and count columns;
        ``point_boot`` is ``[B, P]``.
    """
    boot = np.asarray(boot, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    if boot.shape[1] != len(runs) or observed.shape != (len(runs),):
        raise ValueError(f"{len(runs)} runs but bootstrap {boot.shape} and observed {observed.shape}")
    rng = np.random.default_rng(seed)
    rows, columns = [], []
    for key, idx in runs.reset_index(drop=True).groupby(list(keys), sort=True).indices.items():
        n = idx.size
        if resample_seeds and n > 1:
            draw = rng.integers(0, n, size=(boot.shape[0], n))  # [B, n] seeds drawn per resample
            columns.append(np.take_along_axis(boot[:, idx], draw, axis=1).mean(axis=1))
        else:
            columns.append(boot[:, idx].mean(axis=1))
        values = observed[idx]
        part = runs.iloc[idx]
        rows.append(
            dict(zip(keys, key if isinstance(key, tuple) else (key,)))
            | {
                "n_seeds": int(n),
                "test_loss": float(values.mean()),
                "test_loss_seed_sd": float(values.std(ddof=1)) if n > 1 else float("nan"),
                **{c: float(part[c].astype(float).mean()) for c in mean_columns},
                **{f"{c}_runs": int(part[c].astype(bool).sum()) for c in count_columns},
            }
        )
    point_boot = np.column_stack(columns) if columns else np.empty((boot.shape[0], 0))
    points = pd.DataFrame(rows, columns=None if rows else ["test_loss"])
    low, high = percentile_interval(point_boot)
    points["test_ppl"] = np.exp(points["test_loss"])
    points["test_ppl_ci_low"] = np.exp(low)
    points["test_ppl_ci_high"] = np.exp(high)
    return points, point_boot


POINT_MEANS = ("train_tokens", "dev_loss", "dev_accuracy", "test_accuracy", "parameters", "train_flops", "train_seconds", "steps")
"""runs.csv columns averaged over seeds into the points table (when present)."""


def _run_tuple(path: str) -> tuple:
    """The :data:`~newllm.study.RUN_KEYS` values of the run whose folder holds ``path``."""
    run = RunId.parse(path).as_dict()
    return tuple(run[k] for k in RUN_KEYS)


def run_conversation_sums(
    table: pd.DataFrame, token_nll: dict[str, np.ndarray], sample_end: Sequence[int]
) -> tuple[list, np.ndarray, np.ndarray]:
    """Match every run of ``table`` to its NLL file and reduce it to per-conversation sums.

    Returns:
        ``(keys, sums [C, R], counts [C])``: the runs' :data:`~newllm.study.RUN_KEYS`
        tuples in table order, NLL sums per test conversation and run, targets per conversation.

    Raises:
        ValueError: a run without an NLL file or vice versa, or files that disagree on the test set.
    """
    by_key = {_run_tuple(p): p for p in token_nll}
    keys = [tuple(r) for r in table[RUN_KEYS].itertuples(index=False, name=None)]
    missing = [k for k in keys if k not in by_key]
    extra = sorted(set(by_key) - set(keys))
    if missing or extra:
        raise ValueError(f"runs without a test NLL file: {missing[:5]}; NLL files of unknown runs: {extra[:5]}")
    sums, counts = [], None
    for k in keys:
        s, c = conversation_sums(token_nll[by_key[k]], sample_end)
        if counts is not None and not np.array_equal(c, counts):
            raise ValueError(f"run {k} was scored on a different test set")
        sums.append(s)
        counts = c
    return keys, np.column_stack(sums), counts


def reference_losses(
    token_nll: np.ndarray, sample_end: Sequence[int], resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[float, np.ndarray]:
    """Observed test loss and per-resample losses ``[B]`` of one reference model outside the
    runs table (the frozen head's own LM), on the same conversation draws as
    :func:`bootstrap_study` with the same ``resamples`` and ``seed``: its column pairs
    with every run's.

    Args:
        token_nll: ``[n − 1]`` per-target NLL (nats) on the test stream.
        sample_end: the test stream's conversation ends.

    Raises:
        ValueError: as :func:`conversation_sums`.
    """
    sums, counts = conversation_sums(token_nll, sample_end)
    return float(observed_losses(sums, counts)[0]), bootstrap_losses(sums, counts, resamples, seed)[:, 0]


def check_test_losses(keys: list, observed: np.ndarray, test_loss: np.ndarray, tolerance: float) -> None:
    """Raise ``ValueError`` naming the run whose mean token NLL (``observed``) differs from
    its metrics' ``test_loss`` by more than ``tolerance`` nats."""
    gap = np.abs(observed - test_loss)
    if (gap > tolerance).any():
        i = int(gap.argmax())
        raise ValueError(f"run {keys[i]}: mean test token NLL {observed[i]:.6f} != metrics test_loss {test_loss[i]:.6f}")


def run_intervals(table: pd.DataFrame, observed: np.ndarray, boot: np.ndarray) -> pd.DataFrame:
    """Per run (:data:`~newllm.study.RUN_KEYS`): ``test_ppl`` and its 95 % percentile
    interval from the ``[B, R]`` bootstrap losses."""
    low, high = percentile_interval(boot)
    intervals = table[RUN_KEYS].copy()
    intervals["test_ppl"] = np.exp(observed)
    intervals["test_ppl_ci_low"], intervals["test_ppl_ci_high"] = np.exp(low), np.exp(high)
    return intervals


def bootstrap_study(
    runs: pd.DataFrame,
    token_nll: dict[str, np.ndarray],
    sample_end: Sequence[int],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    resample_seeds: bool = True,
    tolerance: float = 1e-3,
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, dict]:
    """The study's test-set bootstrap: per-run intervals and the seed-mean scaling points.

    Args:
        runs: the runs table (one row per run, :data:`newllm.study.RUN_KEYS`,
            ``test_loss`` and the :data:`POINT_MEANS` / ``undertrained`` columns).
        token_nll: ``{path: [n − 1] token NLL}`` per run; the path names the run
            (``…/runs/{model}/{variant}/samples{N}_ctx{D}_seed{S}/…``).
        sample_end: the test stream's conversation ends (``test.json``).
        resamples, seed: B and the seed of the conversation draw; the seed draw uses
            ``seed + 1``.
        tolerance: largest allowed ``|mean token NLL − runs.test_loss|`` (nats): the two
            come from the same evaluation, so a larger gap means the NLL file and the
            metrics disagree (a contract violation, not noise).

    Returns:
        ``(points, point_boot [B, P], run_intervals, info)``: the points table of
        :func:`seed_mean_points`; per run its keys, ``test_ppl`` and 95 % interval;
        ``info`` = resamples, seed, conversations, targets, seconds.

    Raises:
        ValueError: a run without an NLL file or vice versa, NLL files that disagree on the
            test set, or a test loss that disagrees with its NLL file.
    """
    import time

    t0 = time.perf_counter()
    table = runs.reset_index(drop=True)
    keys, sums, counts = run_conversation_sums(table, token_nll, sample_end)
    observed = observed_losses(sums, counts)
    check_test_losses(keys, observed, table["test_loss"].to_numpy(dtype=float), tolerance)
    boot = bootstrap_losses(sums, counts, resamples, seed)
    intervals = run_intervals(table, observed, boot)
    points, point_boot = seed_mean_points(
        table,
        boot,
        observed,
        seed=seed + 1,
        resample_seeds=resample_seeds,
        mean_columns=[c for c in POINT_MEANS if c in table],
        count_columns=["undertrained"] if "undertrained" in table else [],
    )
    info = {
        "resamples": int(resamples),
        "seed": int(seed),
        "resample_seeds": bool(resample_seeds),
        "conversations": int(counts.size),
        "targets": int(counts.sum()),
        "runs": int(len(table)),
        "points": int(len(points)),
        "seconds": time.perf_counter() - t0,
    }
    return points, point_boot, intervals, info
