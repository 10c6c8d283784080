"""Rule tokenizer (local): materialise and check the GPT-2 BPE files.

``hub:<repo>`` downloads on the submit host, unless the user started Snakemake offline
(newllm.hub); every other job runs with HF_HUB_OFFLINE=1.
"""

from pathlib import Path

from newllm.hub import restore_hub_access

restore_hub_access()  # before huggingface_hub is imported

from newllm.runtime import get_logger  # noqa: E402
from newllm.script import run_script  # noqa: E402
from newllm.tokenizer import install_tokenizer_files, load_tokenizer  # noqa: E402


def main(smk) -> None:
    log = get_logger(smk.log[0])
    folder = Path(smk.output.vocab).parent
    hashes = install_tokenizer_files(smk.params.source, folder)
    load_tokenizer(folder)  # raises unless it gives GPT-2's ids for the check sentence
    log.info("GPT-2 tokenizer from %s, SHA-256 %s", smk.params.source, hashes)


if __name__ == "__main__":
    run_script(main, globals())
