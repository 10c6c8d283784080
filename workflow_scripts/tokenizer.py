"""Rule tokenizer: materialise and check the GPT-2 BPE files."""

from pathlib import Path

from newllm.runtime import get_logger
from newllm.tokenizer import install_tokenizer_files, load_tokenizer

log = get_logger(snakemake.log[0])
folder = Path(snakemake.output.vocab).parent
hashes = install_tokenizer_files(snakemake.params.source, folder)
load_tokenizer(folder)  # raises unless it gives GPT-2's ids for the check sentence
log.info("GPT-2 tokenizer from %s, SHA-256 %s", snakemake.params.source, hashes)
