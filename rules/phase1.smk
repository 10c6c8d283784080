# Phase 1 (CVFP training of the ContextBlock) and the context-cache export, per run.


rule phase1:
    input:
        train=rules.make_train_set.output.tokens,
        train_meta=rules.make_train_set.output.meta,
        validation=rules.make_validation.output.validation,
        validation_meta=rules.make_validation.output.validation_meta,
        embeddings=rules.token_embeddings.output.weights,
    output:
        weights="results/{study}/runs/{variant}/samples{samples}_ctx{context_dim}/phase1/context_block.safetensors",
        metrics="results/{study}/runs/{variant}/samples{samples}_ctx{context_dim}/phase1/metrics.json",
        history="results/{study}/runs/{variant}/samples{samples}_ctx{context_dim}/phase1/history.csv",
    log:
        "results/{study}/logs/phase1/{variant}_samples{samples}_ctx{context_dim}.log",
    benchmark:
        "results/{study}/benchmarks/phase1/{variant}_samples{samples}_ctx{context_dim}.tsv"
    conda:
        "../envs/newllm.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(8000),
        runtime=120,
        gpu=GPUS,
    params:
        run=run_params,
    script:
        "../workflow_scripts/phase1.py"


rule export_contexts:
    input:
        weights=rules.phase1.output.weights,
        train=rules.make_train_set.output.tokens,
        train_meta=rules.make_train_set.output.meta,
        validation=rules.make_validation.output.validation,
        validation_meta=rules.make_validation.output.validation_meta,
        embeddings=rules.token_embeddings.output.weights,
    output:
        train=ensure(
            "results/{study}/runs/{variant}/samples{samples}_ctx{context_dim}/context_cache/train.npy",
            non_empty=True,
        ),
        validation=ensure(
            "results/{study}/runs/{variant}/samples{samples}_ctx{context_dim}/context_cache/validation.npy",
            non_empty=True,
        ),
        meta="results/{study}/runs/{variant}/samples{samples}_ctx{context_dim}/context_cache/cache.json",
    log:
        "results/{study}/logs/export_contexts/{variant}_samples{samples}_ctx{context_dim}.log",
    benchmark:
        "results/{study}/benchmarks/export_contexts/{variant}_samples{samples}_ctx{context_dim}.tsv"
    conda:
        "../envs/newllm.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(8000),
        runtime=60,
        gpu=GPUS,
    params:
        run=run_params,
        cache=config["context_cache"],
    script:
        "../workflow_scripts/export_contexts.py"


rule phase1_diagnostics:
    input:
        weights=rules.phase1.output.weights,
        metrics=rules.phase1.output.metrics,
        validation=rules.make_validation.output.validation,
        validation_meta=rules.make_validation.output.validation_meta,
        validation_cache=rules.export_contexts.output.validation,
        cache_meta=rules.export_contexts.output.meta,
        embeddings=rules.token_embeddings.output.weights,
    output:
        "results/{study}/runs/{variant}/samples{samples}_ctx{context_dim}/diagnostics/phase1_diagnostics.json",
    log:
        "results/{study}/logs/phase1_diagnostics/{variant}_samples{samples}_ctx{context_dim}.log",
    conda:
        "../envs/newllm.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(4000),
        runtime=30,
        gpu=GPUS,
    params:
        run=run_params,
        diagnostics=config["diagnostics"],
    script:
        "../workflow_scripts/phase1_diagnostics.py"
