# Provenance and bookkeeping of a study: the data provenance record and the
# folder of training checkpoints.  Both are local rules that run before any training job.


rule data_provenance:
    """What the study's data is built from (corpus, tokenizer, embeddings, split), recorded
    by the default target; rules/common.smk refuses a config that changes it.  No job
    depends on it: rewriting it (a rebuild, an edit of its script) reruns nothing else,
    and the data rules rerun on their own params when the settings change."""
    input:
        **hub_records(),
    output:
        "results/{study}/provenance.json",
    log:
        log_path("data_provenance"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        provenance=DATA_PROVENANCE,
        code=code_hash("data_provenance"),
    script:
        "../workflow_scripts/data_provenance.py"


rule checkpoint_store:
    """The folder of resumable training checkpoints, an output so that
    `--delete-all-output` removes it.  Training jobs write
    `{run}/{phase}/checkpoint.safetensors` inside it and delete it on success."""
    output:
        directory(CHECKPOINT_STORE),
    log:
        log_path("checkpoint_store"),
    priority: 100  # made before any training job can write into it
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("checkpoint_store"),
    script:
        "../workflow_scripts/checkpoint_store.py"
