"""Rule data_provenance: record what the study's data is built from (newllm.provenance).

Writes ``results/{study}/provenance.json``: the corpus, tokenizer, embeddings and split
settings (compared at DAG time by rules/common.smk), when they were recorded, the
project's git revision, and the hub commits the corpus and GPT-2 checkpoint resolved to
(``hub``; empty for an offline study).
"""

import time

from newllm.io import read_json, write_json
from newllm.runtime import get_logger, git_state
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    hub = {name: read_json(path) for name, path in smk.input.items()}
    record = {**smk.params.provenance, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_state(), "hub": hub}
    write_json(smk.output[0], record)
    log.info("data provenance of study %s: %s", smk.wildcards.study, record)


if __name__ == "__main__":
    run_script(main, globals())
