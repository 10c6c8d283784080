"""Rule retrieve_gpt2 (local, on the submit host): GPT-2's checkpoint into the HF cache.

token_embeddings then loads it with HF_HUB_OFFLINE=1 from the same cache (HF_HOME must
be visible to the compute nodes).  See newllm.hub.
"""

from newllm.hub import restore_hub_access

ONLINE = restore_hub_access()  # before anything imports huggingface_hub

from newllm.hub import retrieve_checkpoint  # noqa: E402
from newllm.io import write_json  # noqa: E402
from newllm.runtime import get_logger  # noqa: E402
from newllm.script import run_script  # noqa: E402


def main(smk) -> None:
    log = get_logger(smk.log[0])
    info = retrieve_checkpoint(smk.params.checkpoint, ONLINE, smk.params.revision)
    write_json(smk.output[0], info)
    log.info(
        "checkpoint %s at %s in %s: %s",
        info["repo_id"],
        info["resolved_revision"],
        info["snapshot_dir"],
        ", ".join(info["files"]),
    )


if __name__ == "__main__":
    run_script(main, globals())
