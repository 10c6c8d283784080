"""Rule retrieve_corpus (local, on the submit host): the rows of a hub corpus as parquet.

The only job that reads the corpus from the hub; cache_corpus then reads the parquet
file offline.  See newllm.hub.
"""

from newllm.hub import restore_hub_access

ONLINE = restore_hub_access()  # before anything imports huggingface_hub or datasets

from newllm.hub import retrieve_corpus_rows  # noqa: E402
from newllm.io import write_json  # noqa: E402
from newllm.runtime import get_logger  # noqa: E402
from newllm.script import run_script  # noqa: E402


def main(smk) -> None:
    log = get_logger(smk.log[0])
    log.info(
        "reading corpus %s from the hub (%s)",
        smk.params.corpus["path"],
        "online" if ONLINE else "offline: Hugging Face cache only",
    )
    info = retrieve_corpus_rows(smk.params.corpus, smk.output.rows, ONLINE)
    write_json(smk.output.info, info)
    log.info(
        "%d rows of %s split %s%s -> %s",
        info["rows"],
        info["repo_id"],
        info["split"],
        " (streamed, take)" if info["streamed"] else "",
        smk.output.rows,
    )


if __name__ == "__main__":
    run_script(main, globals())
