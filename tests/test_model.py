import pytest
import torch

from newllm.model import ContextBlock, ModelConfig, TokenBlock, TokenInput, build_blocks, count_parameters, tied_logits


def _model_cfg(**kw):
    return {"context_dim": 8, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu", **kw}


def test_source_parameter_count_768d():
    # docs/method.md §3: 1 layer, 768-d, 1 input token: ContextBlock ≈ 1.18M parameters.
    # FFN Linear(768+768 -> 768) = 1536·768 + 768, LayerNorm(768) = 2·768.
    block = ContextBlock(ModelConfig(768, 768))
    assert count_parameters(block) == 1536 * 768 + 768 + 2 * 768 == 1_181_952


def test_token_block_parameter_count_with_residual_projection():
    # N_in = 2: h0 is 2·d_e wide, so R is a Linear(2·d_e -> d_e).
    d_c, d_e = 6, 4
    block = TokenBlock(ModelConfig(d_c, d_e, num_input_tokens=2))
    ffn = (d_c + 2 * d_e) * d_e + d_e
    residual = 2 * d_e * d_e + d_e
    assert count_parameters(block) == ffn + residual + 2 * d_e


def test_two_layer_ffn_hidden_is_four_times_input():
    block = ContextBlock(ModelConfig(4, 4, ffn_layers=2))
    first = block.layers[0].ffn[0]
    assert first.in_features == 8 and first.out_features == 32


def test_shapes_and_e_wiring():
    d_c, d_e, L, B = 8, 4, 3, 5
    embeddings = torch.randn(50, d_e)
    token_input = TokenInput(embeddings, num_input_tokens=2)
    ctx_block = ContextBlock(ModelConfig(d_c, d_e, num_input_tokens=2, num_layers=L))
    tok_block = TokenBlock(ModelConfig(d_c, d_e, num_input_tokens=2, num_layers=L))
    stream = torch.randint(0, 50, (20,))
    x = token_input(stream, torch.arange(B))
    assert x.shape == (B, 2 * d_e)
    outputs = ctx_block(torch.zeros(B, d_c), x)
    assert outputs.shape == (B, L, d_c)
    hidden = tok_block(outputs, x)
    assert hidden.shape == (B, d_e)
    assert tied_logits(hidden, embeddings).shape == (B, 50)
    # E-wiring: changing ContextBlock layer 1's output changes the TokenBlock output,
    # and token layer l reads context layer l.
    seen = []
    tok_block.layers[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    tok_block(outputs, x)
    assert torch.equal(seen[0], outputs[:, 1])


def test_token_input_window_is_oldest_first_and_zero_padded():
    embeddings = torch.randn(10, 3)
    token_input = TokenInput(embeddings, num_input_tokens=3)
    stream = torch.tensor([4, 7, 1, 2])
    x = token_input(stream, torch.tensor([1, 3])).view(2, 3, 3)
    normed = torch.nn.functional.layer_norm(embeddings, (3,))
    assert torch.equal(x[0, 0], torch.zeros(3))  # position -1 padded
    assert torch.allclose(x[0, 1], normed[4]) and torch.allclose(x[0, 2], normed[7])
    assert torch.allclose(x[1, 0], normed[7]) and torch.allclose(x[1, 2], normed[2])


def test_embeddings_are_a_buffer_not_a_parameter():
    token_input = TokenInput(torch.randn(10, 3))
    assert count_parameters(token_input) == 0
    assert "weight" not in token_input.state_dict()


def test_build_blocks_init_statistics():
    torch.manual_seed(0)
    ctx, tok = build_blocks(ModelConfig.from_dict(_model_cfg(context_dim=256), embed_dim=256))
    linear = ctx.layers[0].ffn[0]
    assert linear.weight.std().item() == pytest.approx(0.1, rel=0.02)
    assert linear.bias.std().item() == pytest.approx(0.01, rel=0.2)
    assert ctx.config is tok.config and tok.config.token_input_dim == 256


def test_model_config_from_a_run_dict():
    config = ModelConfig.from_dict(_model_cfg(num_input_tokens=2, num_layers=3, seed=9), embed_dim=5)
    assert config == ModelConfig(8, 5, num_input_tokens=2, num_layers=3)  # other keys of the section are ignored
    assert config.token_input_dim == 10
    with pytest.raises(KeyError, match="ffn_layers"):
        ModelConfig.from_dict({k: v for k, v in _model_cfg().items() if k != "ffn_layers"}, embed_dim=5)


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"context_dim": 0}, "context_dim must be a positive integer, got 0"),
        ({"num_layers": 0}, "num_layers must be a positive integer, got 0"),
        ({"num_input_tokens": -1}, "num_input_tokens must be a positive integer, got -1"),
        ({"ffn_layers": 3}, "ffn_layers must be 1 or 2, got 3"),
        ({"activation": "tanh"}, r"activation 'tanh' is not one of \['gelu', 'relu'\]"),
    ],
)
def test_bad_model_config_raises(bad, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(_model_cfg(**bad), embed_dim=4)
    with pytest.raises(ValueError, match="embed_dim must be a positive integer, got 0"):
        ModelConfig(4, 0)


def test_row_windows_do_not_cross_sequence_boundaries():
    embeddings = torch.randn(10, 3)
    token_input = TokenInput(embeddings, num_input_tokens=2)
    rows = token_input.rows(torch.tensor([[1, 2, 3], [4, 5, 6]])).view(2, 3, 2, 3)
    normed = torch.nn.functional.layer_norm(embeddings, (3,))
    assert torch.equal(rows[1, 0, 0], torch.zeros(3))  # not token 3 of the previous row
    assert torch.allclose(rows[1, 0, 1], normed[4]) and torch.allclose(rows[1, 2, 0], normed[5])
