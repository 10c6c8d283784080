import math

import pytest
import torch
import torch.nn.functional as F

from newllm.model import TokenBlock, TokenInput, init_weights, tied_logits
from newllm.phase2 import Phase2Config, TiedCrossEntropy, evaluate, tied_nll_and_correct, train_phase2


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_fused_tied_cross_entropy_matches_autograd(chunk):
    torch.manual_seed(0)
    E = torch.randn(50, 6)
    y = torch.randint(0, 50, (10,))
    h1 = torch.randn(10, 6, requires_grad=True)
    h2 = h1.detach().clone().requires_grad_(True)
    fused = TiedCrossEntropy.apply(h1, E, y, chunk)
    reference = F.cross_entropy(tied_logits(h2, E), y)
    (2.5 * fused).backward()
    (2.5 * reference).backward()
    assert fused.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(h1.grad, h2.grad, atol=1e-6)


def test_nll_and_accuracy_counts():
    E = torch.eye(3)
    h = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    nll, correct = tied_nll_and_correct(h, E, torch.tensor([0, 2]), chunk_tokens=1)
    expected = -torch.log_softmax(h, 1)[[0, 1], [0, 2]].sum().item()
    assert nll == pytest.approx(expected) and correct == 1


def _phase2_setup(n=300, d_c=4, d_e=32, seed=0):
    torch.manual_seed(seed)
    token_input = TokenInput(torch.randn(40, d_e), 1)
    block = TokenBlock(d_c, d_e, d_e)
    init_weights(block)
    stream = torch.arange(n) % 40  # a perfectly predictable cycle
    cache = torch.randn(n, 1, d_c)
    return block, token_input, stream, cache


def test_phase2_learns_a_predictable_stream_and_reports_consistent_metrics():
    block, token_input, stream, cache = _phase2_setup()
    cfg = Phase2Config(max_epochs=40, patience=2, batch_size=32, chunk_tokens=16, learning_rate=1e-2)
    history, summary = train_phase2(block, token_input, stream, cache, stream, cache, cfg, seed=0)
    assert history[0]["val_ppl"] > summary["val_ppl"]
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]))
    assert summary["val_accuracy"] > 0.9  # next token = current + 1: learnable from x̃ alone
    # the block is left with the best epoch's weights
    assert evaluate(block, token_input, stream, cache, cfg)["loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    best = min(history, key=lambda r: r["val_loss"])
    assert summary["best_epoch"] == best["epoch"]


def test_early_stopping_stops_after_patience():
    block, token_input, stream, cache = _phase2_setup()
    val_stream = torch.randint(0, 40, (100,))  # unpredictable: validation stops improving quickly
    cfg = Phase2Config(max_epochs=50, patience=1, batch_size=32, chunk_tokens=16, learning_rate=5e-2)
    history, summary = train_phase2(block, token_input, stream, cache, val_stream, torch.randn(100, 1, 4), cfg, seed=0)
    assert summary["stopped_by"] == "early_stopping"
    assert len(history) == summary["best_epoch"] + 1


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_result():
    """A GPU OOM is simulated on CPU: forward passes over more than 8 tokens fail.
    Accumulated micro-batches give the same training as whole batches."""
    reference_block, token_input, stream, cache = _phase2_setup(n=120)
    cfg = Phase2Config(max_epochs=2, patience=1, batch_size=32, chunk_tokens=16)
    _, reference = train_phase2(reference_block, token_input, stream, cache, stream, cache, cfg, seed=0)

    block, token_input, stream, cache = _phase2_setup(n=120)
    forward = block.forward

    def limited(contexts, x):
        if x.shape[0] > 8 and block.training:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(contexts, x)

    block.forward = limited
    sizes = []
    _, summary = train_phase2(block, token_input, stream, cache, stream, cache, cfg, seed=0, on_oom=sizes.append)
    assert sizes == [16, 8] and summary["micro_batch_size"] == 8
    assert summary["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-5)
    for a, b in zip(block.state_dict().values(), reference_block.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_other_runtime_errors_are_not_swallowed():
    block, token_input, stream, cache = _phase2_setup(n=50)

    def broken(contexts, x):
        raise RuntimeError("shape mismatch")

    block.forward = broken
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_phase2(block, token_input, stream, cache, stream, cache, Phase2Config(max_epochs=1), seed=0)
