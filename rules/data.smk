# Data: tokenizer files, corpus token cache, validation split, nested training sets,
# frozen token embeddings.


rule tokenizer:
    output:
        vocab="results/{study}/data/tokenizer/vocab.json",
        merges="results/{study}/data/tokenizer/merges.txt",
    log:
        "results/{study}/logs/tokenizer.log",
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        source=config["tokenizer"],
    script:
        "../workflow_scripts/tokenizer.py"


rule cache_corpus:
    input:
        vocab=rules.tokenizer.output.vocab,
        merges=rules.tokenizer.output.merges,
    output:
        tokens=ensure("results/{study}/data/corpus/tokens.npy", non_empty=True),
        offsets="results/{study}/data/corpus/offsets.npy",
        manifest="results/{study}/data/corpus/manifest.json",
    log:
        "results/{study}/logs/cache_corpus.log",
    benchmark:
        "results/{study}/benchmarks/cache_corpus.tsv"
    conda:
        "../envs/newllm.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        corpus=config["corpus"],
    script:
        "../workflow_scripts/cache_corpus.py"


rule make_validation:
    input:
        tokens=rules.cache_corpus.output.tokens,
        offsets=rules.cache_corpus.output.offsets,
        manifest=rules.cache_corpus.output.manifest,
    output:
        validation=ensure("results/{study}/data/validation.npy", non_empty=True),
        validation_meta="results/{study}/data/validation.json",
        pool="results/{study}/data/train_pool.npy",
        pool_meta="results/{study}/data/train_pool.json",
    log:
        "results/{study}/logs/make_validation.log",
    conda:
        "../envs/newllm.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        num_samples=config["validation"]["num_samples"],
        max_train_samples=max(SAMPLE_SIZES),
        seed=config["seed"],
    script:
        "../workflow_scripts/make_validation.py"


rule make_train_set:
    input:
        pool=rules.make_validation.output.pool,
        pool_meta=rules.make_validation.output.pool_meta,
        validation=rules.make_validation.output.validation,
        validation_meta=rules.make_validation.output.validation_meta,
    output:
        tokens=ensure("results/{study}/data/train/samples{samples}.npy", non_empty=True),
        meta="results/{study}/data/train/samples{samples}.json",
    log:
        "results/{study}/logs/make_train_set/samples{samples}.log",
    conda:
        "../envs/newllm.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        require_full_coverage=config["validation"]["require_full_coverage"],
    script:
        "../workflow_scripts/make_train_set.py"


rule token_embeddings:
    input:
        pool=rules.make_validation.output.pool,
        pool_meta=rules.make_validation.output.pool_meta,
    output:
        weights="results/{study}/embeddings/token_embeddings.safetensors",
        meta="results/{study}/embeddings/token_embeddings.json",
    log:
        "results/{study}/logs/token_embeddings.log",
    benchmark:
        "results/{study}/benchmarks/token_embeddings.tsv"
    conda:
        "../envs/newllm.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=60,
    params:
        embeddings=config["embeddings"],
        seed=config["seed"],
    script:
        "../workflow_scripts/token_embeddings.py"
