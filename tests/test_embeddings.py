import numpy as np
import pytest
import torch

from newllm.embeddings import gpt2_embeddings, random_embeddings, rescale_rows, word2vec_embeddings
from newllm.tokenizer import EOT_ID, VOCAB_SIZE


def test_gpt2_wte_from_a_local_tiny_checkpoint(tmp_path):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=VOCAB_SIZE, n_embd=8, n_layer=1, n_head=2, n_positions=16))
    model.save_pretrained(tmp_path / "tiny-gpt2")
    matrix = gpt2_embeddings(str(tmp_path / "tiny-gpt2"))
    assert matrix.shape == (VOCAB_SIZE, 8)
    assert np.array_equal(matrix, model.wte.weight.detach().numpy())


def test_gpt2_wrong_vocabulary_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(vocab_size=100, n_embd=8, n_layer=1, n_head=2, n_positions=16)).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="vocabulary 100"):
        gpt2_embeddings(str(tmp_path / "m"))


def test_word2vec_is_seeded_and_covers_the_pool():
    rng = np.random.default_rng(0)
    stream = np.concatenate([np.r_[rng.integers(0, 40, 30), EOT_ID] for _ in range(20)])
    a, info = word2vec_embeddings(stream, 8, seed=3, epochs=2)
    b, _ = word2vec_embeddings(stream, 8, seed=3, epochs=2)
    assert a.shape == (VOCAB_SIZE, 8) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert info["covered_types"] == np.unique(stream).size
    assert info["sentences"] == 20


def test_random_and_rescale():
    m = rescale_rows(random_embeddings(4, seed=1), 1.0)
    assert np.linalg.norm(m, axis=1).mean() == pytest.approx(1.0, rel=1e-5)
    assert np.array_equal(random_embeddings(4, seed=1), random_embeddings(4, seed=1))
