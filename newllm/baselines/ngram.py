"""Interpolated Kneser-Ney n-gram language model over GPT-2 token ids.

Why written here rather than taken from a library: ``nltk.lm.KneserNeyInterpolated``
scores one (word, context) pair at a time in pure Python (minutes for the ~50k-word
distributions an argmax needs; nltk/nltk#3317), raises ``ZeroDivisionError`` on unseen
contexts (nltk/nltk#2332) and gives ids outside its fitted vocabulary probability 0
(nltk/nltk#3211), so it is neither fast nor normalised over GPT-2's 50,257 ids; KenLM
estimates models with the compiled ``lmplz`` binary (its pip package only queries ARPA
files), which the environment does not have.  The estimator below is the textbook
formula, vectorised with numpy and ``scipy.sparse``: fitting on 140k tokens and scoring
30k take well under a second each.

Model (Chen & Goodman 1998, "An empirical study of smoothing techniques for language
modeling", TR-10-98, §3.5 and §4.1.6; Kneser & Ney 1995).  For order ``k`` (history
``h`` of ``k-1`` tokens, ``h'`` = ``h`` without its oldest token) with ``a_k(h w)`` the
count of the k-gram — the raw count ``c(h w)`` at the highest order ``n``, the
*continuation count* ``N1+(• h w)`` (number of distinct tokens seen before ``h w``) at
every lower order::

    p_k(w | h) = max(a_k(h w) - D_k(a), 0) / S_k(h)  +  gamma_k(h) · p_{k-1}(w | h')
    S_k(h)     = Σ_w a_k(h w)
    gamma_k(h) = Σ_{w: a_k(h w) > 0} D_k(a_k(h w)) / S_k(h)
    p_0(w)     = 1 / V                                  (uniform over the full vocabulary)

and ``p_k(w | h) = p_{k-1}(w | h')`` when ``S_k(h) = 0`` (history never seen, or only at
the very start of the stream).  Each level sums to one over all ``V`` ids whenever the
level below does, so every distribution is normalised over the full vocabulary and every
id has ``p > 0`` (``gamma_1 > 0`` because the unigram level has at least one type).

Discounts: ``discount="modified"`` (default) uses modified Kneser-Ney's three discounts
per order, estimated from that order's counts-of-counts ``n_r`` (number of k-grams with
``a_k = r``; Chen & Goodman 1998 eq. 26)::

    Y = n1 / (n1 + 2 n2),  D(1) = 1 - 2Y n2/n1,  D(2) = 2 - 3Y n3/n2,  D(3+) = 3 - 4Y n4/n3

When some ``n_1..n_4`` is zero or a ``D(r)`` falls outside ``(0, r]`` (tiny corpora), that
order falls back to one discount ``D = Y`` clipped to ``[0.1, 0.9]`` (Ney, Essen & Kneser
1994's estimate).  A number ``0 < D ≤ 1`` instead uses that fixed discount for every
count at every order (``0.75`` is the classic choice).

Stream conventions: the training and scoring streams are single token sequences
(conversations joined by ``<|endoftext|>``, which is scored like any token, as the
neural models do).  Target ``t+1`` of a stream is predicted from the last ``n-1`` tokens
``stream[t-n+2 .. t]``; near the start of a stream only the available tokens are used
(history -1 = "no token"), i.e. the highest order whose history fits.

The rule ngram serves every count-family model of the catalogue: ``ngram`` counts the
training tokens, ``ngram_slice`` the embedding slice (the conversations the frozen
embeddings and tied head of the neural models were trained on) followed by the training
tokens, so it sees the same data as they do (:func:`counted_stream`, :func:`fit_and_score`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from newllm.tokenizer import EOT_ID, VOCAB_SIZE

NO_TOKEN = -1
"""Marks a history slot before the start of the stream."""


@dataclass
class _Level:
    """Statistics of one order ``k``: k-grams are keyed ``context_id · V + w`` where
    ``context_id`` is the dense id of the (k-1)-gram history (0 for ``k = 1``)."""

    keys: np.ndarray  # [G] int64 sorted k-gram keys (dense id of a k-gram = its index here)
    alpha: np.ndarray  # [G] float64 discounted probability mass max(a - D(a), 0) / S(h)
    gamma: np.ndarray  # [H + 1] float64 back-off weight per history (last entry: unseen -> 1)
    matrix: sp.csr_matrix  # [H + 1, V] alpha as a sparse (history, word) matrix (last row empty)
    discounts: tuple[float, float, float]  # D(1), D(2), D(3+)


class KneserNeyLM:
    """Interpolated (modified) Kneser-Ney LM of order ``n`` over ids ``0..V-1``.

    Args:
        order: ``n`` ≥ 1 (3 = trigram).
        discount: ``"modified"`` or a fixed discount in ``(0, 1]``.
        vocab_size: ``V``; the distribution is normalised over all ``V`` ids.

    Raises:
        ValueError: bad ``order``, ``discount`` or ``vocab_size``.
    """

    def __init__(self, order: int = 3, discount: str | float = "modified", vocab_size: int = VOCAB_SIZE) -> None:
        if not isinstance(order, (int, np.integer)) or order < 1:
            raise ValueError(f"n-gram order must be an integer >= 1, got {order!r}")
        if discount != "modified" and not (isinstance(discount, (int, float)) and 0 < float(discount) <= 1):
            raise ValueError(f"discount must be 'modified' or a number in (0, 1], got {discount!r}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.order = int(order)
        self.discount = discount
        self.vocab_size = int(vocab_size)
        self.levels: list[_Level] = []
        self.unigram: np.ndarray | None = None  # [V] p_1(w), the full lowest-order distribution

    # ---------------------------------------------------------------- fitting

    def fit(self, stream: np.ndarray) -> "KneserNeyLM":
        """Count the k-grams of ``stream`` (``[N]`` token ids) and estimate every level.

        Raises:
            ValueError: fewer than 2 tokens, or ids outside ``0..V-1``.
        """
        s = np.asarray(stream, dtype=np.int64)
        if s.ndim != 1 or s.size < 2:
            raise ValueError(f"the training stream needs at least 2 tokens as a 1-D array, got shape {s.shape}")
        self._check_ids(s, "training stream")
        V, n, N = self.vocab_size, self.order, s.size
        # dense ids of the k-gram ending at each position (-1 where none fits): ids[k][i]
        ids: list[np.ndarray | None] = [None, s]
        keys: list[np.ndarray | None] = [None, np.arange(V, dtype=np.int64)]
        first_pos: list[np.ndarray | None] = [None, None]
        for k in range(2, n + 1):
            pos = np.arange(k - 1, N)
            key = ids[k - 1][pos - 1] * V + s[pos]
            uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            dense = np.full(N, -1, dtype=np.int64)
            dense[pos] = inverse
            ids.append(dense)
            keys.append(uniq)
            first_pos.append(pos[first])
        self.levels = []
        for k in range(1, n + 1):
            num = keys[k].size
            if k == n:  # raw counts at the highest order
                valid = ids[k][ids[k] >= 0]
                counts = np.bincount(valid, minlength=num)
            else:  # continuation counts: distinct (k+1)-grams whose suffix is this k-gram
                counts = np.bincount(ids[k][first_pos[k + 1]], minlength=num)
            self.levels.append(self._level(keys[k], counts.astype(np.float64), num_histories=1 if k == 1 else keys[k - 1].size))
        lowest = self.levels[0]
        self.unigram = lowest.alpha + lowest.gamma[0] / V
        return self

    def _level(self, keys: np.ndarray, counts: np.ndarray, num_histories: int) -> _Level:
        V = self.vocab_size
        history = keys // V if num_histories > 1 else np.zeros_like(keys)
        word = keys % V
        d = self._discounts(counts)
        discount = np.where(counts >= 3, d[2], np.where(counts == 2, d[1], np.where(counts == 1, d[0], 0.0)))
        total = np.bincount(history, weights=counts, minlength=num_histories)
        removed = np.bincount(history, weights=discount, minlength=num_histories)
        seen = total > 0
        alpha = np.where(counts > 0, np.maximum(counts - discount, 0.0) / np.where(seen, total, 1.0)[history], 0.0)
        gamma = np.append(np.where(seen, removed / np.where(seen, total, 1.0), 1.0), 1.0)  # unseen -> full back-off
        nz = alpha > 0
        matrix = sp.csr_matrix((alpha[nz], (history[nz], word[nz])), shape=(num_histories + 1, V))
        return _Level(keys=keys, alpha=alpha, gamma=gamma, matrix=matrix, discounts=d)

    def _discounts(self, counts: np.ndarray) -> tuple[float, float, float]:
        if self.discount != "modified":
            return (float(self.discount),) * 3
        return modified_kn_discounts(counts)

    # ---------------------------------------------------------------- scoring

    def _check_ids(self, ids: np.ndarray, what: str, history: bool = False) -> None:
        """Raise ``ValueError`` naming ``what`` unless every id is in ``0..V-1``
        (``NO_TOKEN`` is also allowed in a ``history``: a context before the stream's start)."""
        real = ids[ids != NO_TOKEN] if history else ids
        if real.size and (real.min() < 0 or real.max() >= self.vocab_size):
            bad = real[(real < 0) | (real >= self.vocab_size)][0]
            extra = f" (and {NO_TOKEN} for 'no token')" if history else ""
            raise ValueError(f"{what} holds id {int(bad)}; allowed: 0..{self.vocab_size - 1}{extra}")

    def _history_ids(self, contexts: np.ndarray) -> list[np.ndarray]:
        """Dense history id per order: entry ``k-1`` is ``[B]`` ids of the last ``k-1``
        tokens as a (k-1)-gram (index of the level's unseen row when unseen/unavailable)."""
        B = contexts.shape[0]
        out = [np.zeros(B, dtype=np.int64)]  # order 1: the empty history
        for k in range(2, self.order + 1):
            j = k - 1  # history length
            hist = contexts[:, contexts.shape[1] - j :]
            dense = hist[:, 0].copy()  # a 1-gram's dense id is its token id
            ok = dense != NO_TOKEN
            for col in range(1, j):
                dense, found = self._lookup(
                    j_level=col + 1, keys=dense * self.vocab_size + hist[:, col], valid=ok & (hist[:, col] != NO_TOKEN)
                )
                ok &= found
            unseen_row = self.levels[k - 1].gamma.size - 1
            out.append(np.where(ok, dense, unseen_row))
        return out

    def _lookup(self, j_level: int, keys: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense ids of k-gram ``keys`` at order ``j_level`` (``found`` False when unseen)."""
        table = self.levels[j_level - 1].keys
        idx = np.searchsorted(table, np.where(valid, keys, 0))
        idx = np.minimum(idx, table.size - 1)
        found = valid & (table[idx] == keys)
        return np.where(found, idx, 0), found

    def _contexts(self, contexts: np.ndarray) -> np.ndarray:
        if self.unigram is None:
            raise RuntimeError("KneserNeyLM is not fitted; call fit(stream) first")
        ctx = np.asarray(contexts, dtype=np.int64)
        width = self.order - 1
        if ctx.ndim == 1:
            ctx = ctx[None, :]
        if ctx.ndim != 2:
            raise ValueError(f"contexts must be [B, order-1] token ids, got shape {ctx.shape}")
        if ctx.shape[1] < width:  # left-pad short histories with "no token"
            ctx = np.concatenate([np.full((ctx.shape[0], width - ctx.shape[1]), NO_TOKEN), ctx], axis=1)
        ctx = ctx[:, ctx.shape[1] - width :] if width else ctx[:, :0]
        self._check_ids(ctx, "context", history=True)
        return ctx

    def prob(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``p(target | context)`` for each row.

        Args:
            contexts: ``[B, m]`` token ids, oldest first (only the last ``n-1`` are used;
                ``-1`` = before the start of the stream).
            targets: ``[B]`` token ids.

        Returns:
            ``[B]`` float64 probabilities (> 0).
        """
        ctx = self._contexts(contexts)
        y = np.asarray(targets, dtype=np.int64).reshape(-1)
        if y.size != ctx.shape[0]:
            raise ValueError(f"{ctx.shape[0]} contexts but {y.size} targets")
        self._check_ids(y, "targets")
        hists = self._history_ids(ctx)
        p = self.unigram[y].copy()
        for k in range(2, self.order + 1):
            level, h = self.levels[k - 1], hists[k - 1]
            unseen = h == level.gamma.size - 1
            idx, found = self._lookup(k, h * self.vocab_size + y, ~unseen)
            p = np.where(found, level.alpha[idx], 0.0) + level.gamma[h] * p
        return p

    def _sparse_part(self, contexts: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """``p(· | h) = S[b] + Γ[b] · p_1`` with ``S`` ``[B, V]`` sparse (orders ≥ 2) and
        ``Γ`` ``[B]`` the product of the back-off weights of orders 2..n."""
        ctx = self._contexts(contexts)
        hists = self._history_ids(ctx)
        B = ctx.shape[0]
        S = sp.csr_matrix((B, self.vocab_size))
        scale = np.ones(B)
        for k in range(self.order, 1, -1):  # from the highest order down
            level, h = self.levels[k - 1], hists[k - 1]
            S = S + sp.diags(scale) @ level.matrix[h]
            scale = scale * level.gamma[h]
        return S.tocsr(), scale

    def distribution(self, contexts: np.ndarray) -> np.ndarray:
        """Full next-token distributions ``[B, V]`` float64 (dense: use for few rows)."""
        S, scale = self._sparse_part(contexts)
        return S.toarray() + scale[:, None] * self.unigram[None, :]

    def argmax(self, contexts: np.ndarray) -> np.ndarray:
        """Most probable next token per row, ``[B]`` int64, without dense ``[B, V]`` arrays.

        Outside the row's sparse support ``p(w|h) = Γ·p_1(w)``, largest at
        ``w* = argmax p_1``; so the answer is the best support entry if it beats
        ``Γ·p_1(w*)``, else ``w*`` (ties go to the support entry, the smaller id order
        within it).
        """
        S, scale = self._sparse_part(contexts)
        S.sum_duplicates()
        best_id = int(np.argmax(self.unigram))
        out = np.full(S.shape[0], best_id, dtype=np.int64)
        if S.nnz == 0:
            return out
        rows = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
        values = S.data + scale[rows] * self.unigram[S.indices]
        order = np.lexsort((S.indices, -values, rows))  # per row: largest value first
        first = order[np.r_[0, np.flatnonzero(np.diff(rows[order])) + 1]]
        fallback = scale[rows[first]] * self.unigram[best_id]
        take = values[first] >= fallback
        out[rows[first][take]] = S.indices[first][take]
        return out

    def stream_contexts(self, stream: np.ndarray) -> np.ndarray:
        """``[n-1, order-1]`` histories of every target ``stream[t+1]`` (``-1``-padded)."""
        s = np.asarray(stream, dtype=np.int64)
        width = self.order - 1
        padded = np.concatenate([np.full(width, NO_TOKEN), s[:-1]])
        if width == 0:
            return np.zeros((s.size - 1, 0), dtype=np.int64)
        return np.lib.stride_tricks.sliding_window_view(padded, width)[1:]

    def score_stream(self, stream: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Per-target NLL and top-1 hits of a stream.

        Args:
            stream: ``[n]`` token ids, ``n ≥ 2``.

        Returns:
            ``(nll, correct)``: ``[n-1]`` float64 ``-ln p(stream[t+1] | stream[..t])`` in
            nats, and ``[n-1]`` bool whether the argmax was the target.

        Raises:
            ValueError: fewer than 2 tokens or ids out of range.
        """
        s = np.asarray(stream, dtype=np.int64)
        if s.ndim != 1 or s.size < 2:
            raise ValueError(f"a scored stream needs at least 2 tokens as a 1-D array, got shape {s.shape}")
        self._check_ids(s, "scored stream")
        ctx, y = self.stream_contexts(s), s[1:]
        nll = -np.log(self.prob(ctx, y))
        # one argmax per distinct history: frequent histories have the largest sparse rows
        unique, inverse = np.unique(ctx, axis=0, return_inverse=True)
        best = np.concatenate([self.argmax(unique[i : i + chunk]) for i in range(0, unique.shape[0], chunk)])
        return nll, best[inverse.reshape(-1)] == y

    def num_ngrams(self) -> list[int]:
        """Number of stored k-gram probabilities (``alpha > 0``) per order k = 1..n."""
        return [int(np.count_nonzero(level.alpha > 0)) for level in self.levels]

    def effective_parameters(self) -> int:
        """The model's size: stored k-gram probabilities plus one back-off weight per
        history that has continuations (nothing is trained; reported as ``parameters``)."""
        histories = sum(int(np.count_nonzero(level.gamma[:-1] != 1.0)) for level in self.levels)
        return sum(self.num_ngrams()) + histories


def modified_kn_discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """``(D(1), D(2), D(3+))`` from counts-of-counts (Chen & Goodman 1998, eq. 26).

    ``n_r`` = number of entries of ``counts`` equal to ``r``; ``Y = n1/(n1 + 2 n2)``,
    ``D(1) = 1 - 2Y n2/n1``, ``D(2) = 2 - 3Y n3/n2``, ``D(3+) = 3 - 4Y n4/n3``.  When some
    ``n_1..n_4`` is 0 or a ``D(r)`` leaves ``(0, r]``, one discount ``Y`` clipped to
    ``[0.1, 0.9]`` (0.75 when ``n1 = n2 = 0``) is returned three times.
    """
    c = np.asarray(counts).astype(np.int64)
    n1, n2, n3, n4 = (int(np.count_nonzero(c == r)) for r in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) > 0:
        y = n1 / (n1 + 2 * n2)
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        if all(0 < value <= r for value, r in zip(d, (1, 2, 3))):
            return d
    y = n1 / (n1 + 2 * n2) if n1 + n2 > 0 else 0.75
    single = min(max(y, 0.1), 0.9)
    return (single, single, single)


# ------------------------------------------------------------------ the rule's run


def counted_stream(train: np.ndarray, slice_stream: np.ndarray | None = None, separator: int = EOT_ID) -> np.ndarray:
    """The stream a count model is fitted on: ``slice_stream``, one ``separator``, then ``train``.

    Both streams are conversations joined by ``<|endoftext|>`` (newllm.data.token_stream)
    without one at either end, so the separator makes the join one more conversation
    boundary: every k-gram across it passes through ``<|endoftext|>``, as every k-gram
    across two conversations of one stream does.  ``train`` alone (as int64) when the slice
    is ``None`` or empty.

    Returns:
        ``[S + 1 + N]`` int64 ids (``[N]`` without a slice).
    """
    train = np.asarray(train, dtype=np.int64)
    if slice_stream is None or np.asarray(slice_stream).size == 0:
        return train
    return np.concatenate([np.asarray(slice_stream, dtype=np.int64), np.array([separator], dtype=np.int64), train])


def _score(lm: "KneserNeyLM", tokens: np.ndarray) -> dict[str, Any]:
    """Mean NLL (nats), top-1 accuracy, the per-target NLL and the seconds of one split."""
    t0 = time.perf_counter()
    nll, correct = lm.score_stream(np.asarray(tokens, dtype=np.int64))
    return {"loss": float(nll.mean()), "accuracy": float(correct.mean()), "nll": nll, "seconds": time.perf_counter() - t0}


def _summary(
    lm: "KneserNeyLM", scores: dict[str, dict], train_tokens: int, slice_tokens: int, counted: int, fit_seconds: float
) -> dict[str, Any]:
    """The run summary of a fitted n-gram (the keys of :func:`fit_and_score`)."""
    return {
        "train_tokens": train_tokens,
        "slice_tokens": slice_tokens,
        "counted_tokens": counted,
        "counted_tokens_note": "train_tokens: training targets (the scaling x-axis); counted_tokens: "
        "slice_tokens + 1 <|endoftext|> + training tokens (training tokens alone without a slice)",
        "dev_loss": scores["dev"]["loss"],
        "dev_ppl": math.exp(scores["dev"]["loss"]),
        "dev_accuracy": scores["dev"]["accuracy"],
        "test_loss": scores["test"]["loss"],
        "test_ppl": math.exp(scores["test"]["loss"]),
        "test_accuracy": scores["test"]["accuracy"],
        "test_tokens": int(scores["test"]["nll"].size),
        "parameters": lm.effective_parameters(),
        "parameters_note": "effective: stored n-gram probabilities + back-off weights of seen histories (nothing is trained)",
        "ngrams_per_order": lm.num_ngrams(),
        "discounts_per_order": [list(level.discounts) for level in lm.levels],
        "train_flops": 0.0,
        "train_flops_note": "counting: no gradient training",
        "train_seconds": fit_seconds,
        "dev_seconds": scores["dev"]["seconds"],
        "test_seconds": scores["test"]["seconds"],
        "steps": 0,
        "best_step": 0,
        "stopped_by": "closed_form",
        "undertrained": False,
        "tokens_processed": counted,
    }


def fit_and_score(
    train: np.ndarray,
    dev: np.ndarray,
    test: np.ndarray,
    order: int = 3,
    discount: str | float = "modified",
    slice_stream: np.ndarray | None = None,
    vocab_size: int = VOCAB_SIZE,
    separator: int = EOT_ID,
) -> tuple[KneserNeyLM, dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """Fit a :class:`KneserNeyLM` on :func:`counted_stream` and score ``dev`` and ``test``.

    ``order`` and ``discount`` are the config's (``baselines.ngram``): nothing is selected on
    dev, which is scored for the same table columns as the other models.  ``separator``
    joins slice and training tokens (``<|endoftext|>``; another id for a small test vocabulary).

    Summary keys beyond the run contract (newllm.analysis.SUMMARY_COLUMNS):
    ``train_tokens`` = next-token targets of the training stream (``N - 1``, as every model
    reports it: the scaling study's x-axis, whatever else was counted); ``slice_tokens`` =
    tokens of the slice counted before it (0 without one); ``counted_tokens`` = length of
    the counted stream (slice + separator + ``N``, or ``N``), also ``tokens_processed``.

    Returns:
        ``(lm, summary, history, test_nll)``: the fitted model, the metrics summary, the
        one-row history and ``[n_test - 1]`` float64 per-target test NLL in nats.
    """
    train = np.asarray(train, dtype=np.int64)
    stream = counted_stream(train, slice_stream, separator)
    t0 = time.perf_counter()
    lm = KneserNeyLM(order, discount, vocab_size).fit(stream)
    fit_seconds = time.perf_counter() - t0
    scores = {split: _score(lm, tokens) for split, tokens in (("dev", dev), ("test", test))}
    slice_tokens = 0 if slice_stream is None else int(np.asarray(slice_stream).size)
    summary = _summary(lm, scores, int(train.size - 1), slice_tokens, int(stream.size), fit_seconds)
    history = [
        {
            "step": 0,
            "tokens": summary["counted_tokens"],
            "train_loss": None,
            "dev_loss": summary["dev_loss"],
            "dev_ppl": summary["dev_ppl"],
            "dev_accuracy": summary["dev_accuracy"],
            "seconds": fit_seconds,
        }
    ]
    return lm, summary, history, scores["test"]["nll"]
