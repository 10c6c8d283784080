"""Training compute (FLOPs) of every model, one formula for all (docs/method.md §10.4).

Kaplan et al. (2020), "Scaling Laws for Neural Language Models", arXiv:2001.08361, §2.1
and Table 1: the forward pass costs ``2N`` FLOPs per token (one multiply and one add
per weight) and the backward pass about twice that, so training costs ``C ≈ 6N`` FLOPs
per token for ``N`` trained, non-embedding parameters.  For a dense layer the backward's
``4N`` is ``2N`` for the gradient with respect to its input plus ``2N`` for the gradient
with respect to its weights.

The tied output head ``logits = h Eᵀ`` (``E`` ``[V, d_e]``, frozen in every model here)
is a dense layer of ``V·d_e`` weights that is never updated: per training token it
needs its forward (``2·V·d_e``, the logits) and the gradient with respect to its input
(``2·V·d_e``, ``∂L/∂h = (p − onehot) E``) to reach the trained weights below it, but no
gradient with respect to ``E``.  So the head costs ``4·V·d_e`` per token, not ``6``.

Hence, for every trained model (Phase 2's TokenBlock, the neural baselines)::

    train_flops = tokens · (6 · trained_parameters + 4 · V · d_e)

with ``tokens`` = the next-token targets processed by optimizer steps (dev evaluations
excluded) and ``V`` the full vocabulary (merging identical head rows, :class:`newllm.head.TiedHead`,
is an exact speed-up of the same computation, not a smaller model).  Left out, as by
Kaplan et al.: attention-score FLOPs (``∝`` context length per token), the embedding
lookup, LayerNorms, softmax and other elementwise work.

CVFP's ContextBlock is trained in Phase 1, not in Phase 2: its cost is
:func:`phase1_flops`, which the caller adds to the Phase 2 ``train_flops`` of a model
whose ContextBlock was trained (cvfp), never to the controls with an untrained or no
ContextBlock.
"""

from __future__ import annotations

TRAIN_FLOPS_FORMULA = "tokens_processed * (6 * trained_parameters + 4 * V * d_e)"
""":func:`train_flops` in words, written into every run's summary."""


def train_flops(trained_parameters: int, tokens: int, vocab_size: int, embed_dim: int) -> float:
    """Training FLOPs of a model ending in the frozen tied head (module docstring):
    ``tokens · (6 · trained_parameters + 4 · V · d_e)``.

    Args:
        trained_parameters: parameters updated by the optimizer (the frozen embeddings excluded).
        tokens: next-token targets processed by optimizer steps.
        vocab_size: ``V``, rows of the embedding matrix.
        embed_dim: ``d_e``.
    """
    return float(tokens) * (6.0 * trained_parameters + 4.0 * vocab_size * embed_dim)


def phase1_flops(context_parameters: int, stream_tokens: int, iterations: int) -> float:
    """Training FLOPs of Phase 1 (docs/method.md §4): ``6 · P_c · n · iterations``.

    Each Phase 1 iteration is one training sweep: the ContextBlock's forward and backward
    at all ``n`` positions of the training stream (Kaplan's ``6N`` per token), then one
    Adam step.  Its dev sweeps and final measurement are evaluations and, as in
    :func:`train_flops`, not counted; nor is the context cache's fixed-point solve.  No
    head is involved.

    Args:
        context_parameters: the ContextBlock's trained parameters ``P_c``.
        stream_tokens: ``n``, tokens of the training stream (Phase 1 sweeps every position).
        iterations: Phase 1 iterations run (its summary's ``iterations``).
    """
    return 6.0 * context_parameters * stream_tokens * iterations
