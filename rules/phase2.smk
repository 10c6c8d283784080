# Phase 2: TokenBlock training on the cached contexts with the tied frozen head, per run.


rule phase2:
    input:
        train=rules.make_train_set.output.tokens,
        train_meta=rules.make_train_set.output.meta,
        validation=rules.make_validation.output.validation,
        validation_meta=rules.make_validation.output.validation_meta,
        embeddings=rules.token_embeddings.output.weights,
        train_cache=rules.export_contexts.output.train,
        validation_cache=rules.export_contexts.output.validation,
        cache_meta=rules.export_contexts.output.meta,
    output:
        weights="results/{study}/runs/{variant}/samples{samples}_ctx{context_dim}/phase2/token_block.safetensors",
        metrics="results/{study}/runs/{variant}/samples{samples}_ctx{context_dim}/phase2/metrics.json",
        history="results/{study}/runs/{variant}/samples{samples}_ctx{context_dim}/phase2/history.csv",
    log:
        "results/{study}/logs/phase2/{variant}_samples{samples}_ctx{context_dim}.log",
    benchmark:
        "results/{study}/benchmarks/phase2/{variant}_samples{samples}_ctx{context_dim}.tsv"
    conda:
        "../envs/newllm.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(8000),
        runtime=240,
        gpu=GPUS,
    params:
        run=run_params,
    script:
        "../workflow_scripts/phase2.py"
