"""The ``bigram`` embedding source (docs/method.md §2): a log-bilinear bigram language model
with tied input/output embeddings, trained on the embedding slice, and the head fit that
scores any frozen embedding matrix as an output head (:mod:`newllm.embeddings` describes
the four sources and the row scale).

**Ids never seen** in the training part of the slice (most of the 50,257 GPT-2 ids on a
chat corpus) share one learned ``unknown`` row ``u`` in the ``bigram`` model: as an input
they all read ``LN(u)``; as outputs they all get logit ``u · h``.  The model is trained
with the full 50,257-way softmax, computed exactly as a softmax over the ``K`` seen ids
plus one "unknown" class holding ``V − K`` identical logits (offset ``ln(V − K)``), so
``u`` is trained only through the softmax denominator and ends with low logits; early
stopping on the held-out part (whose unseen tokens *are* scored with ``u``) stops it
before ``u`` is pushed down past what held-out text supports.

**Quality.**  Every source can be scored as a head: :func:`fit_bigram_head` trains only
``f`` (the best ``LN_{γ,β}(W · + b)`` map) on top of frozen ``E``; for ``bigram`` the
training itself gives the score.  Losses are in nats per target token over the full
50,257-id vocabulary, perplexity ``= exp(loss)``.

References: A. Mnih, G. Hinton, "Three new graphical models for statistical language
modelling", ICML 2007 (log-bilinear LM); O. Press, L. Wolf, "Using the Output Embedding
to Improve Language Models", EACL 2017 (tied input/output embeddings).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from newllm.config_fields import BigramFields
from newllm.embeddings import check_embedding_config
from newllm.tokenizer import EOT_ID, VOCAB_SIZE
from newllm.training import EarlyStopping, check_finite


# --------------------------------------------------------------------------- bigram statistics
def split_heldout(stream: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split a stream of ``<|endoftext|>``-separated conversations into train and held-out parts.

    The last ``ceil(fraction · conversations)`` conversations (at least one, and at least
    one left for training) are held out; the slice is already a seeded random draw of
    the corpus, so its order carries no bias.  The separator before the held-out part is
    dropped.

    Returns:
        ``(train [n_train], heldout [n_heldout])`` int64.

    Raises:
        ValueError: ``fraction`` outside (0, 1), or fewer than two conversations.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {fraction}")
    ids = np.asarray(stream, dtype=np.int64)
    eots = np.flatnonzero(ids == EOT_ID)
    num_conv = eots.size + 1
    if num_conv < 2:
        raise ValueError("the embedding slice needs at least two conversations to hold one out")
    held = min(max(1, math.ceil(fraction * num_conv)), num_conv - 1)
    cut = eots[num_conv - held - 1]  # the separator that ends the last training conversation
    return ids[:cut], ids[cut + 1 :]


@dataclass
class BigramCounts:
    """Next-token counts of a stream, grouped by distinct context, in class indices.

    A bigram model's loss depends on the stream only through these counts, so each
    distinct context's logits are computed once however often it occurs.

    Attributes:
        contexts: ``[U]`` int64 class index of each distinct context ``w_t``.
        weights: ``[U]`` float64 occurrences ``n_a`` of each context as a predictor.
        indptr: ``[U + 1]`` int64 CSR row pointers into ``cols``/``counts``.
        cols: ``[nnz]`` int64 class index of each observed successor.
        counts: ``[nnz]`` float64 ``c(a, b)``.
        tokens: number of next-token targets (``len(stream) - 1``).
    """

    contexts: np.ndarray
    weights: np.ndarray
    indptr: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    tokens: int

    @classmethod
    def from_stream(cls, stream: np.ndarray, class_of: np.ndarray) -> "BigramCounts":
        """Counts of the pairs ``(stream[t], stream[t+1])``, ``t = 0..n-2``, mapped by ``class_of [V]``."""
        ids = class_of[np.asarray(stream, dtype=np.int64)]
        num_classes = int(class_of.max()) + 1
        pair, count = np.unique(ids[:-1] * num_classes + ids[1:], return_counts=True)  # sorted by context
        ctx, col = np.divmod(pair, num_classes)
        contexts, starts = np.unique(ctx, return_index=True)
        indptr = np.append(starts, pair.size).astype(np.int64)
        weights = np.add.reduceat(count, starts).astype(np.float64) if pair.size else np.zeros(0)
        return cls(contexts, weights, indptr, col, count.astype(np.float64), max(int(ids.size) - 1, 0))

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR rows ``index [k]`` as COO: ``(local row in 0..k-1, col, count)``."""
        starts, lengths = self.indptr[index], self.indptr[index + 1] - self.indptr[index]
        local = np.repeat(np.arange(index.size), lengths)
        pos = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
        return local, self.cols[pos], self.counts[pos]


# --------------------------------------------------------------------------- the model
class _WeightedLogSumExp(torch.autograd.Function):
    """``Σ_a w_a · logsumexp_c(rows_c · hidden_a + log_mult_c)`` with a fused, chunked backward.

    The ``[chunk, C]`` softmax is computed once per chunk in the forward pass and turned
    straight into the gradients ``∂/∂hidden = (w P) rows`` and ``∂/∂rows = (w P)ᵀ hidden``,
    so no ``[U, C]`` matrix is ever materialised (as ``newllm.phase2.TiedCrossEntropy``).

    Inputs: ``hidden [U, d]``, ``rows [C, d]``, ``log_mult [C]`` (or ``None``),
    ``weights [U]``, ``chunk`` int.  Output: scalar.
    """

    @staticmethod
    def forward(ctx, hidden, rows, log_mult, weights, chunk):  # type: ignore[override]
        need_h, need_rows = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = hidden.new_zeros((), dtype=torch.float64)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_rows = torch.zeros_like(rows) if need_rows else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s : s + chunk]
            logits = h @ rows.t()  # [chunk, C]
            if log_mult is not None:
                logits += log_mult
            top = logits.max(dim=1, keepdim=True).values
            probs = logits.sub_(top).exp_()  # in place
            z = probs.sum(dim=1, keepdim=True)
            w = weights[s : s + chunk, None]
            total += (w * (top + z.log())).sum().double()
            if need_h or need_rows:
                probs.mul_(w / z)  # w_a · softmax
                if need_h:
                    grad_h[s : s + chunk] = probs @ rows
                if need_rows:
                    grad_rows.addmm_(probs.t(), h)
        ctx.save_for_backward(grad_h if need_h else None, grad_rows if need_rows else None)
        return total.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad_h, grad_rows = ctx.saved_tensors
        return (
            None if grad_h is None else grad_h * grad_output,
            None if grad_rows is None else grad_rows * grad_output,
            None,
            None,
            None,
        )


class BigramLM(nn.Module):
    """Tied log-bilinear bigram model ``p(v | w) = softmax_v(E_v · LN_{γ,β}(W LN(E_w) + b))``.

    The output vocabulary is a set of ``C`` *classes* with one row each: a token id maps
    to a class through ``class_of [V]``; class ``c`` stands for ``exp(log_mult[c])``
    ids with identical rows (the shared unknown row), so the softmax over classes with
    the offset ``log_mult`` is exactly the full ``V``-way softmax.

    Args:
        rows: ``[C, d_e]`` initial class rows.
        log_mult: ``[C]`` log multiplicity of each class, or ``None`` (all 1).
        trainable_rows: train ``E`` (``bigram``) or keep it frozen (head fit).
    """

    def __init__(self, rows: Tensor, log_mult: Tensor | None, trainable_rows: bool) -> None:
        super().__init__()
        if trainable_rows:
            self.rows = nn.Parameter(rows.detach().clone().float())
        else:
            self.register_buffer("rows", rows.detach().float(), persistent=False)
        self.register_buffer("log_mult", None if log_mult is None else log_mult.float(), persistent=False)
        d = rows.shape[1]
        self.proj = nn.Linear(d, d)  # f: W, b
        self.norm = nn.LayerNorm(d)  # γ, β: the downstream TokenLayer's last operation

    def hidden(self, contexts: Tensor) -> Tensor:
        """``[U]`` context class indices -> ``h [U, d_e]``."""
        x = F.layer_norm(self.rows[contexts], (self.rows.shape[1],))  # the downstream input x_t
        return self.norm(self.proj(x))

    def nll(
        self, contexts: Tensor, weights: Tensor, tgt_rows: Tensor, tgt_cols: Tensor, tgt_counts: Tensor, chunk: int
    ) -> Tensor:
        """Summed NLL in nats: ``Σ_a w_a lse_a − Σ c_ab (E_b · h_a)`` (targets as COO).

        Shapes: ``contexts``/``weights`` ``[U]``; ``tgt_*`` ``[nnz]`` (``tgt_rows`` index
        into ``contexts``).
        """
        h = self.hidden(contexts)
        partition = _WeightedLogSumExp.apply(h, self.rows, self.log_mult, weights, chunk)
        target = (h[tgt_rows] * self.rows[tgt_cols]).sum(dim=1)
        return partition - (tgt_counts * target).sum()

    def gain(self) -> float:
        """RMS of the LayerNorm gain ``γ`` (the head temperature held outside ``E``)."""
        return float(self.norm.weight.detach().pow(2).mean().sqrt())


def _counts_tensors(counts: BigramCounts, index: np.ndarray, scale: np.ndarray | None = None):
    local, cols, vals = counts.rows(index)
    if scale is not None:
        vals = vals * scale[local]
    weights = counts.weights[index] if scale is None else counts.weights[index] * scale
    as_t = torch.from_numpy
    return (
        as_t(counts.contexts[index]),
        as_t(weights.astype(np.float32)),
        as_t(local),
        as_t(cols),
        as_t(vals.astype(np.float32)),
    )


def bigram_loss(model: BigramLM, counts: BigramCounts, chunk: int = 1024) -> float:
    """Mean NLL (nats per target token) of ``model`` on a stream's counts (no gradient).

    Raises:
        ValueError: the stream has no targets.
    """
    if counts.tokens == 0:
        raise ValueError("cannot score a stream with fewer than two tokens")
    total = 0.0
    with torch.no_grad():
        for s in range(0, counts.contexts.size, 8 * chunk):
            index = np.arange(s, min(s + 8 * chunk, counts.contexts.size))
            total += float(model.nll(*_counts_tensors(counts, index), chunk))
    return total / counts.tokens


@dataclass
class BigramConfig(BigramFields):
    """Training settings for :func:`train_bigram_model` / :func:`fit_bigram_head`: the
    fields of the schema's ``embeddings.bigram`` section
    (:class:`newllm.config_fields.BigramFields`, generated from it, with each field's
    meaning; ``min_steps``/``max_steps`` bound :class:`newllm.training.EarlyStopping`).

    Defaults measured on the chitchat slice of 1,000 conversations (455k training tokens,
    d_e = 64, one CPU thread): about 110 steps, 50 s of CPU; ``lr 0.01, weight_decay 3`` reaches
    a 2 % lower test PPL in 40 % more time, ``weight_decay 0`` a 12 % higher one.
    """

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | None) -> "BigramConfig":
        """Build from the ``embeddings.bigram`` config section (unknown keys are refused).

        Raises:
            ValueError: an unknown key.
        """
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown embeddings.bigram keys: {sorted(unknown)}")
        return cls(**cfg)


def _train(model: BigramLM, train: BigramCounts, heldout: BigramCounts, cfg: BigramConfig, seed: int) -> dict[str, Any]:
    """AdamW on sampled contexts with early stopping on held-out NLL; loads the best weights.

    Each step draws ``batch_tokens`` targets uniformly from the training part, i.e.
    contexts with probability ``n_a / n`` (a multinomial, seeded), and scores each drawn
    context against its whole successor distribution (``c_ab / n_a`` per draw): the
    expected gradient is the full-data gradient, with less variance than single targets.
    """
    rng = np.random.default_rng(seed)
    probs = train.weights / train.weights.sum()
    decayed = [p for n, p in model.named_parameters() if p.requires_grad and n in ("rows", "proj.weight")]
    others = [p for n, p in model.named_parameters() if p.requires_grad and n not in ("rows", "proj.weight")]
    opt = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}], lr=cfg.lr
    )
    stopper = EarlyStopping(cfg.patience, cfg.min_steps, cfg.max_steps, cfg.min_delta)
    history: list[dict[str, float]] = []
    t0, cpu0, step, last = time.perf_counter(), time.process_time(), 0, None
    while True:
        draws = rng.multinomial(cfg.batch_tokens, probs)
        index = np.flatnonzero(draws)
        scale = draws[index] / train.weights[index]  # per-draw share of each successor count
        loss = model.nll(*_counts_tensors(train, index, scale), cfg.chunk) / cfg.batch_tokens
        check_finite(float(loss.detach()), f"bigram embeddings step {step}", last)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step, last = step + 1, float(loss.detach())
        if step % cfg.eval_every == 0 or step >= cfg.max_steps:
            held = bigram_loss(model, heldout, cfg.chunk)
            history.append({"step": step, "train_loss": last, "heldout_loss": held, "seconds": time.perf_counter() - t0})
            if stopper.update(step, held, lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}):
                break
    model.load_state_dict(stopper.best_state)
    return {
        "steps": step,
        "best_step": stopper.best_step,
        "stopped_by": stopper.finish(step),
        "undertrained": stopper.undertrained,
        "heldout_loss": stopper.best_loss,
        "heldout_ppl": math.exp(stopper.best_loss),
        "train_seconds": time.perf_counter() - t0,
        "train_cpu_seconds": time.process_time() - cpu0,
        "history": history,
    }


def _score(model: BigramLM, class_of: np.ndarray, streams: dict[str, np.ndarray], chunk: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, stream in streams.items():
        counts = BigramCounts.from_stream(stream, class_of)
        loss = bigram_loss(model, counts, chunk)
        out.update({f"{name}_loss": loss, f"{name}_ppl": math.exp(loss), f"{name}_tokens": counts.tokens})
    return out


def token_nll(model: BigramLM, class_of: np.ndarray, stream: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Per-target NLL ``[n - 1]`` float32: entry ``t`` = ``-ln p(stream[t+1] | stream[t])`` in nats.

    Over the full 50,257-id vocabulary (an id of the unknown class gets ``1/(V − K)`` of
    that class's probability).  ``[chunk, C]`` logits at a time.
    """
    ids = torch.from_numpy(class_of[np.asarray(stream, dtype=np.int64)])
    out = np.empty(max(ids.shape[0] - 1, 0), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, out.size, chunk):
            h = model.hidden(ids[s : min(s + chunk, out.size)])
            logits = h @ model.rows.t()  # [chunk, C]
            full = logits if model.log_mult is None else logits + model.log_mult
            target = logits.gather(1, ids[s + 1 : s + 1 + h.shape[0], None]).squeeze(1)
            out[s : s + h.shape[0]] = (torch.logsumexp(full, dim=1) - target).numpy()
    return out


def unigram_loss(train: np.ndarray, stream: np.ndarray) -> float:
    """Mean NLL (nats/token) of add-one-smoothed unigram counts of ``train`` on ``stream[1:]`` (a baseline)."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=VOCAB_SIZE) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(stream, dtype=np.int64)[1:]].mean())


def train_bigram_model(
    slice_stream: np.ndarray, embed_dim: int, seed: int, cfg: BigramConfig | None = None
) -> tuple[BigramLM, np.ndarray, dict[str, Any]]:
    """Train the tied log-bilinear bigram model on the embedding slice.

    The slice is split by :func:`split_heldout`; the ``K`` ids seen in the training part
    get their own rows, every other id the shared unknown row (class ``K``).
    Initialisation (seeded): rows ~ N(0, 1/d_e) (unit expected norm, unit-variance
    initial logits), ``f`` with PyTorch's Linear default and ``γ = 1, β = 0``.

    Args:
        slice_stream: ``[n]`` GPT-2 ids of the embedding slice, conversations separated
            by ``<|endoftext|>`` (disjoint from training, dev and test sets).
        embed_dim: ``d_e``.
        seed: seeds the initialisation and the batch draws (same seed ⇒ same model on
            the same machine and thread count).

    Returns:
        ``(model, class_of [V] int64, info)``; ``info`` has ``train_tokens``,
        ``heldout_tokens``, ``covered_types`` (``K``), ``unknown_ids``,
        ``heldout_loss``/``heldout_ppl``, ``steps``, ``best_step``, ``stopped_by``,
        ``undertrained``, ``train_seconds``, ``train_cpu_seconds`` and ``history``.

    Raises:
        ValueError: bad ``embed_dim``, a slice with fewer than two conversations.
        newllm.training.TrainingDivergedError: the loss became NaN/Inf.
    """
    check_embedding_config("bigram", embed_dim)
    cfg = cfg or BigramConfig()
    train_ids, heldout_ids = split_heldout(slice_stream, cfg.heldout_fraction)
    seen = np.unique(train_ids)
    num_seen = int(seen.size)
    class_of = np.full(VOCAB_SIZE, num_seen, dtype=np.int64)  # unseen -> the unknown class K
    class_of[seen] = np.arange(num_seen)
    num_unknown = VOCAB_SIZE - num_seen
    log_mult = torch.zeros(num_seen + 1)
    log_mult[num_seen] = math.log(num_unknown) if num_unknown else -math.inf

    torch.manual_seed(seed)
    rows = torch.randn(num_seen + 1, embed_dim) / math.sqrt(embed_dim)
    model = BigramLM(rows, log_mult, trainable_rows=True)
    train = BigramCounts.from_stream(train_ids, class_of)
    info = _train(model, train, BigramCounts.from_stream(heldout_ids, class_of), cfg, seed)
    info.update(
        model="bigram log-bilinear LM, E trained (tied input/output)",
        train_tokens=int(train_ids.size),
        heldout_tokens=int(heldout_ids.size),
        covered_types=num_seen,
        unknown_ids=num_unknown,
    )
    return model, class_of, info


def bigram_matrix(model: BigramLM, class_of: np.ndarray) -> tuple[np.ndarray, float]:
    """The ``[V, d_e]`` float32 embedding of a trained model, global scale folded in.

    Row of id ``v`` = ``rows[class_of[v]] · rms(γ)`` (every unseen id gets the unknown
    row).  With ``γ, β`` divided by the same factor the model's outputs are unchanged.

    Returns:
        ``(E, rms(γ))``.
    """
    gain = model.gain()
    rows = model.rows.detach() * gain
    return rows[torch.from_numpy(class_of)].numpy().astype(np.float32), gain


def train_bigram_embeddings(
    slice_stream: np.ndarray,
    embed_dim: int,
    seed: int,
    cfg: BigramConfig | None = None,
    eval_streams: dict[str, np.ndarray] | None = None,
    token_nll_of: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``bigram`` source: :func:`train_bigram_model`, scored, as a ``[V, d_e]`` matrix.

    Args:
        eval_streams: e.g. ``{"dev": ..., "test": ...}``: scored after training
            (``dev_loss``, ``dev_ppl``, ``dev_tokens``, ...; the add-one unigram
            baseline ``unigram_dev_ppl`` of the same training tokens, and
            ``dev_unknown_targets``: targets whose id has the unknown row).
        token_nll_of: a key of ``eval_streams`` whose per-target NLL (:func:`token_nll`)
            is returned as ``info["token_nll"]`` (``[n − 1]`` float32 nats; for the
            test-set bootstrap, paired with every model's).

    Returns:
        ``(E [V, d_e] float32, info)``: :func:`train_bigram_model`'s ``info`` plus the
        scores, ``folded_gain`` and row-norm statistics (``row_norm_mean_seen``,
        ``row_norm_unknown``).

    Raises:
        ValueError, TrainingDivergedError: as :func:`train_bigram_model`.
    """
    cfg = cfg or BigramConfig()
    model, class_of, info = train_bigram_model(slice_stream, embed_dim, seed, cfg)
    info.update(_score(model, class_of, eval_streams or {}, cfg.chunk))
    if token_nll_of is not None:
        info["token_nll"] = token_nll(model, class_of, (eval_streams or {})[token_nll_of])
    train_ids, _ = split_heldout(slice_stream, cfg.heldout_fraction)
    for name, stream in (eval_streams or {}).items():
        info[f"unigram_{name}_ppl"] = math.exp(unigram_loss(train_ids, stream))
        info[f"{name}_unknown_targets"] = int((class_of[np.asarray(stream, dtype=np.int64)[1:]] == info["covered_types"]).sum())
    matrix, gain = bigram_matrix(model, class_of)
    norms = np.linalg.norm(model.rows.detach().numpy() * gain, axis=1)
    info.update(folded_gain=gain, row_norm_mean_seen=float(norms[:-1].mean()), row_norm_unknown=float(norms[-1]))
    return matrix, info


def fit_bigram_head(
    matrix: np.ndarray,
    slice_stream: np.ndarray,
    seed: int,
    cfg: BigramConfig | None = None,
    eval_streams: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Score a frozen ``E`` as a tied head: train only ``f`` of :class:`BigramLM` on the slice.

    The best ``h = LN_{γ,β}(W LN(E_w) + b)`` with ``E`` frozen, trained and early-stopped
    like :func:`train_bigram_model` (same split, same softmax over all 50,257 rows of
    ``E``), so its PPL is directly comparable with the ``bigram`` source's.

    Args:
        matrix: ``[V, d_e]`` frozen embeddings (e.g. word2vec's, random, GPT-2's).

    Returns:
        ``info`` like :func:`train_bigram_embeddings` (``heldout_ppl``, ``test_ppl``, ...,
        ``head_gain``: the RMS LayerNorm gain this head needed).

    Raises:
        ValueError: ``matrix`` is not ``[V, d_e]``, or a bad slice/config.
    """
    if matrix.ndim != 2 or matrix.shape[0] != VOCAB_SIZE:
        raise ValueError(f"embeddings must be [{VOCAB_SIZE}, d_e], got shape {matrix.shape}")
    cfg = cfg or BigramConfig()
    train_ids, heldout_ids = split_heldout(slice_stream, cfg.heldout_fraction)
    class_of = np.arange(VOCAB_SIZE, dtype=np.int64)
    torch.manual_seed(seed)
    model = BigramLM(torch.from_numpy(np.ascontiguousarray(matrix)), None, trainable_rows=False)
    info = _train(
        model, BigramCounts.from_stream(train_ids, class_of), BigramCounts.from_stream(heldout_ids, class_of), cfg, seed
    )
    info.update(_score(model, class_of, eval_streams or {}, cfg.chunk))
    info.update(
        model="bigram head f trained on frozen E",
        train_tokens=int(train_ids.size),
        heldout_tokens=int(heldout_ids.size),
        head_gain=model.gain(),
    )
    return info
