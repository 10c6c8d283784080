# Downloads from the Hugging Face hub, as local rules on the submit host (compute nodes
# often have no internet; every job runs with HF_HUB_OFFLINE=1, see newllm/hub.py).
# In the DAG only when the study needs them: corpus.source hub, embeddings.source gpt2
# with a hub id.  The tokenizer rule (tokenizer: hub:<repo>) is a local rule as well.
# A download can fail for reasons that pass (a dropped connection, a rate limit, a hub
# outage): a failed retrieve job is restarted up to RETRIEVE_RETRIES times before the
# run stops.

RETRIEVE_RETRIES = 3


rule retrieve_corpus:
    """The rows of a hub corpus the study reads, as one local parquet file
    (`max_samples` rows streamed with `take`, not the whole split)."""
    output:
        rows="results/{study}/data/corpus/hub_rows.parquet",
        info="results/{study}/data/corpus/hub_rows.json",
    log:
        log_path("retrieve_corpus"),
    retries: RETRIEVE_RETRIES
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        corpus=config["corpus"],
        code=code_hash("retrieve_corpus"),
    script:
        "../workflow_scripts/retrieve_corpus.py"


rule retrieve_gpt2:
    """GPT-2's checkpoint in the Hugging Face cache (HF_HOME), for token_embeddings."""
    output:
        "results/{study}/data/hub/gpt2_checkpoint.json",
    log:
        log_path("retrieve_gpt2"),
    retries: RETRIEVE_RETRIES
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        checkpoint=config["embeddings"].get("gpt2_checkpoint"),
        revision=config["embeddings"].get("gpt2_revision"),
        code=code_hash("retrieve_gpt2"),
    script:
        "../workflow_scripts/retrieve_gpt2.py"


HUB_CORPUS_INPUT = (
    {"hub_rows": rules.retrieve_corpus.output.rows}
    if config["corpus"]["source"] == "hub"
    else {}
)
"""Extra input of cache_corpus: the retrieved rows of a hub corpus."""
GPT2_CHECKPOINT_INPUT = (
    {"gpt2_checkpoint": rules.retrieve_gpt2.output[0]}
    if config["embeddings"]["source"] == "gpt2"
    and not Path(config["embeddings"]["gpt2_checkpoint"]).is_dir()
    else {}
)
"""Extra input of token_embeddings: GPT-2's hub checkpoint, fetched into the HF cache."""
