"""Context producers (newllm.producers) and the baseline factory (newllm.baselines.factory)."""

import pytest
import torch

from newllm.baselines.factory import attention_heads, build_baseline
from newllm.baselines.mingru import MinGRULM
from newllm.baselines.models import LSTMLM, TransformerLM, embed
from newllm.model import TokenInput
from newllm.producers import context_producer
from newllm.runtime import save_weights


def test_lstm_states_row_i_is_the_state_after_token_i():
    torch.manual_seed(0)
    embeddings = torch.randn(30, 8)
    lstm = LSTMLM(embeddings, hidden_size=6).eval()
    stream = torch.randint(0, 30, (25,))
    states = lstm.stream_states(stream)
    assert states.shape == (25, 1, 6) and states.dtype == torch.float32
    with torch.no_grad():  # a direct forward over the prefix ending at token i
        for i in (0, 7, 24):
            out, _ = lstm.lstm(embed(embeddings, stream[None, : i + 1]))
            torch.testing.assert_close(states[i, 0], out[0, -1], rtol=0, atol=1e-6)


def test_lm_states_producer_caches_the_trained_lstm_exactly(tmp_path):
    torch.manual_seed(1)
    embeddings = torch.randn(30, 8)
    lstm = LSTMLM(embeddings, hidden_size=5)
    path = tmp_path / "lstm.safetensors"
    save_weights(path, lstm.state_dict(), {})
    params = {"run": {"context_dim": 5}, "phase1": {"batch_size": 64}}
    produce, parameters = context_producer("lm_states", params, TokenInput(embeddings), torch.device("cpu"), path, {})
    stream = torch.randint(0, 30, (40,))
    cache, info = produce(stream)
    torch.testing.assert_close(cache, lstm.eval().stream_states(stream), rtol=0, atol=0)
    assert parameters == 4 * 5 * (8 + 5) + 8 * 5 and info["method"] == "lstm_states"
    with pytest.raises(ValueError, match="context source 'zero' has no cache"):
        context_producer("zero", params, TokenInput(embeddings), torch.device("cpu"), path, {})


def test_attention_heads_are_at_least_16_wide():
    assert attention_heads(22, 2) == 1  # two heads would be 11 wide
    assert attention_heads(64, 8) == 4 and attention_heads(48, 2) == 2 and attention_heads(50, 4) == 2
    assert attention_heads(8, 4) == 1  # narrower than one head: one head


def test_factory_builds_every_neural_baseline_to_its_target():
    torch.manual_seed(2)
    embeddings = torch.randn(50, 16)
    settings = {"dropout": 0.0, "num_layers": 1}
    model, size = build_baseline("mingru", embeddings, settings, 5000, 0.1)
    assert isinstance(model, MinGRULM) and abs(size.relative_gap) <= 0.1
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == size.parameters
    transformer = {"num_layers": 1, "num_heads": 4, "block_size": 16, "dropout": 0.0, "eval_stride": None}
    model, size = build_baseline("transformer", embeddings, transformer, 20000, 0.1)
    assert isinstance(model, TransformerLM) and abs(size.relative_gap) <= 0.1
    heads = model.blocks[0].attn.num_heads
    assert heads == attention_heads(size.size, 4) and (size.size // heads >= 16 or heads == 1)
    with pytest.raises(ValueError, match="neural baselines are"):
        build_baseline("gru", embeddings, settings, 5000, 0.1)
