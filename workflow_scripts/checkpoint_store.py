"""Rule checkpoint_store: the study's folder of resumable training checkpoints.

An output of its own rule, so Snakemake knows it and ``--delete-all-output`` removes it;
training jobs (newllm.pipeline.run_checkpoint) write and delete checkpoints inside it.
"""

from pathlib import Path

from newllm.runtime import get_logger
from newllm.script import run_script

README = """Resumable checkpoints of this study's training jobs, one per running or killed job:
{run}/{phase}/checkpoint.safetensors.  A job that finishes deletes its checkpoint.
Made by the rule checkpoint_store; `snakemake --delete-all-output` removes this folder.
"""


def main(smk) -> None:
    log = get_logger(smk.log[0])
    folder = Path(smk.output[0])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.txt").write_text(README)
    log.info("checkpoint folder %s", folder)


if __name__ == "__main__":
    run_script(main, globals())
