"""Hierarchical bootstrap of the study's test losses: training seeds, then test conversations.

No torch import.  Method: docs/method.md §11.

**Conversations.**  The unit of resampling of the test set is a test **conversation**, not
a token: tokens of one conversation are strongly dependent (topic, speaker, the recurrent
state carried along), so a token bootstrap would give intervals that are far too narrow.
Every run of a study is scored on the same test stream; a run's test loss is

    L_r = Σ_k S[k, r] / Σ_k C[k]          (nats per target token)

with ``S[k, r]`` the NLL sum of run ``r`` over the targets of conversation ``k`` and
``C[k]`` the number of those targets (the same for every run).  One replicate draws K
conversations with replacement, a count vector ``w_b ~ Multinomial(K, 1/K)``, and every
run's loss on it is ``L*_r(b) = (w_b @ S)[r] / (w_b @ C)`` (:func:`bootstrap_losses`).

**Seeds.**  A study's training seeds choose the training conversations (sizes nested
within a seed), the initialisation and the batch order; dev and test never move.  A
scaling point (model, variant, context_dim, samples) has one run per seed and its loss is
the seed mean in loss space (= the geometric mean of the seeds' PPL).  With
``resample_seeds=True`` each replicate first draws the seeds with replacement,
``J[b] ∈ {0..n−1}^n`` over the point's seeds in label order, and the point's replicate
loss is

    L*_p(b) = (1/n) Σ_j L*_{run(p, seed J[b, j])}(b)        (nats per target token)

i.e. the mean over the drawn seeds of the token-weighted loss on the drawn conversations
(two-stage resampling, Davison & Hinkley 1997, §3.8).  Seeds and conversations are
crossed, not nested (every run is scored on every conversation), so the conversation draw
``w_b`` is one for all runs and seeds; resampling both factors of a crossed design
independently is Owen's (2007) pigeonhole bootstrap, which errs on the wide side.

**Pairing.**  Every run and the head's LM use the same ``w_b``, and every point with the
same seed labels uses the same ``J[b]`` (seed ``s`` of cvfp and of reset_context share
the Phase 1 weights; seed ``s`` at two sizes shares training conversations), so the
per-replicate difference of two points carries their correlation (Efron & Tibshirani
1993, ch. 6; the paired bootstrap of Koehn 2004).  The paired differences and the whole
study's bootstrap (:func:`newllm.paired_gains.bootstrap_study`) are in
:mod:`newllm.paired_gains`.

**Random numbers.**  ``w`` comes from ``default_rng(seed)`` alone, ``J`` from
``default_rng(seed + 1)`` alone, and a point with one seed draws nothing: with one seed
per point, and with ``resample_seeds=False``, the point losses are exactly the
conversation bootstrap of the same ``seed``.  With ``n`` seeds the seed draw understates
the seed variance of the mean by the factor ``(n − 1)/n`` (2/3 for 3 seeds).

**Outputs** (``results/{study}/bootstrap/``, rule ``bootstrap_test``):

- ``point_losses.npy``: ``[B, P]`` float64, ``L*_p(b)`` above in nats per target token;
  column ``p`` is row ``p`` of ``points.csv``, row ``b`` replicate ``b`` (the same seed
  and conversation draw in every column); NaN where a replicate drew only target-free
  conversations.  Every interval of ``points.csv`` and of the fits that read it comes
  from this array.
- ``head_losses.npy``: ``[B]`` the head's LM on the same conversation draws (empty when
  the embeddings have no LM of their own).
- ``points.csv``: :func:`seed_mean_points` plus
  :data:`newllm.paired_gains.HEAD_GAIN_COLUMNS`.
- ``paired_gains.csv``: :func:`newllm.paired_gains.paired_gains_table`.

Intervals are 95 % percentile intervals of the bootstrap distribution.

Sources: Davison, A. C. & Hinkley, D. V. (1997) *Bootstrap Methods and their
Application*, §3.8; Efron, B. & Tibshirani, R. J. (1993) *An Introduction to the
Bootstrap*, ch. 6 and 13; Owen, A. B. (2007) The pigeonhole bootstrap, *Annals of Applied
Statistics* 1(2), 386–411; Koehn, P. (2004) Statistical significance tests for machine
translation evaluation, *EMNLP 2004*.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Sequence

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


def point_groups(runs: pd.DataFrame, keys: Sequence[str] = POINT_KEYS) -> list[tuple[tuple, np.ndarray, tuple]]:
    """The runs of each point, their seeds in label order.

    Args:
        runs: one row per run with the ``keys`` columns and ``seed``.

    Returns:
        One ``(key, rows, seeds)`` per distinct ``keys`` value, sorted by key: ``key`` the
        tuple of key values, ``rows`` ``[n]`` int positions in ``runs`` ordered by seed,
        ``seeds`` the tuple of the ``n`` seed labels (ascending).

    Raises:
        ValueError: no ``seed`` column, or a point with the same seed twice.
    """
    if "seed" not in runs:
        raise ValueError("the runs table has no 'seed' column: the seed draw pairs points by seed label")
    table = runs.reset_index(drop=True)
    groups = []
    for key, idx in table.groupby(list(keys), sort=True).indices.items():
        labels = table["seed"].to_numpy()[idx]
        order = np.argsort(labels, kind="stable")
        seeds = tuple(int(x) for x in labels[order])
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"point {key} has a seed more than once: {seeds}")
        groups.append((key if isinstance(key, tuple) else (key,), idx[order], seeds))
    return groups


def seed_draws(seed_sets: Iterable[tuple], resamples: int, seed: int) -> dict[tuple, np.ndarray]:
    """The first stage of the hierarchical bootstrap: seeds drawn with replacement.

    Args:
        seed_sets: the seed labels of every point (tuples; repeats allowed).
        resamples: B.
        seed: seeds ``default_rng``; the draws depend on it and on the distinct sets alone.

    Returns:
        ``{seeds: J [B, n] int64}`` for every distinct set of ``n > 1`` seeds, ``J[b, j]``
        the position in ``seeds`` of the ``j``-th seed drawn in replicate ``b``.  Every
        point with the same seeds (in a complete study: every point) uses the same ``J``,
        so comparisons between points stay paired by seed.  Sets are drawn in sorted order
        from one generator; a one-seed set draws nothing, so it leaves the other draws and
        the conversation draw untouched.
    """
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, len(s), size=(resamples, len(s))) for s in sorted(set(map(tuple, seed_sets))) if len(s) > 1}


def hierarchical_point_losses(boot: np.ndarray, groups: list[tuple[tuple, np.ndarray, tuple]], draws: dict) -> np.ndarray:
    """Each point's loss on every replicate: the mean over its drawn seeds of the runs'
    losses on the drawn conversations.

    Args:
        boot: ``[B, R]`` run losses on the conversation replicates (:func:`bootstrap_losses`),
            nats per target token.
        groups: :func:`point_groups` of the runs (rows index the columns of ``boot``).
        draws: :func:`seed_draws`; a point whose seed set has no draw (one seed, or seeds
            not resampled) takes the plain mean of its seeds.

    Returns:
        ``[B, P]`` float64, column ``p`` = point ``groups[p]`` (nats per target token).
    """
    boot = np.asarray(boot, dtype=np.float64)
    columns = []
    for _, rows, seeds in groups:
        draw = draws.get(seeds)
        runs = boot[:, rows]  # [B, n] in seed-label order
        columns.append(runs.mean(axis=1) if draw is None else np.take_along_axis(runs, draw, axis=1).mean(axis=1))
    return np.column_stack(columns) if columns else np.empty((boot.shape[0], 0))


def _point_row(key: tuple, keys: Sequence[str], values: np.ndarray, part: pd.DataFrame, means, counts) -> dict:
    """One row of the points table: keys, seed count, seed-mean loss and SD, means, counts."""
    n = values.size
    return dict(zip(keys, key)) | {
        "n_seeds": int(n),
        "test_loss": float(values.mean()),
        "test_loss_seed_sd": float(values.std(ddof=1)) if n > 1 else float("nan"),
        **{c: float(part[c].astype(float).mean()) for c in means},
        **{f"{c}_runs": int(part[c].astype(bool).sum()) for c in counts},
    }


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
    """The scaling points: seeds averaged in loss space, on the data and on every replicate.

    Args:
        runs: one row per run (column order of ``boot``) with the ``keys`` columns and ``seed``.
        boot: ``[B, R]`` run losses on the conversation replicates (:func:`bootstrap_losses`).
        observed: ``[R]`` test losses on the full test set (nats per target token).
        seed: seeds the draw of training seeds (:func:`seed_draws`).
        resample_seeds: draw the seeds with replacement in every replicate (the
            hierarchical bootstrap); ``False``: the conversation bootstrap of the seed mean.
        mean_columns: further ``runs`` columns averaged over seeds (e.g. ``train_tokens``).
        count_columns: boolean ``runs`` columns counted over seeds as ``{column}_runs``.

    Returns:
        ``(points, point_boot)``: ``points`` has one row per distinct ``keys`` (sorted),
        with ``n_seeds``, ``test_loss`` (mean over seeds), ``test_loss_seed_sd`` (sample SD
        over seeds, NaN for one seed), ``test_ppl = exp(test_loss)`` and its 95 %
        percentile interval ``test_ppl_ci_low/high`` from ``point_boot``, and the mean and
        count columns; ``point_boot`` is ``[B, P]`` (:func:`hierarchical_point_losses`).

    Raises:
        ValueError: ``boot`` or ``observed`` do not have one column per run; as
            :func:`point_groups`.
    """
    boot = np.asarray(boot, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    if boot.ndim != 2 or boot.shape[1] != len(runs) or observed.shape != (len(runs),):
        raise ValueError(f"{len(runs)} runs but bootstrap {boot.shape} and observed {observed.shape}")
    table = runs.reset_index(drop=True)
    groups = point_groups(table, keys)
    draws = seed_draws([g[2] for g in groups], boot.shape[0], seed) if resample_seeds else {}
    point_boot = hierarchical_point_losses(boot, groups, draws)
    rows = [_point_row(k, keys, observed[i], table.iloc[i], mean_columns, count_columns) for k, i, _ in groups]
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
