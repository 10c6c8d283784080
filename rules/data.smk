# Data: tokenizer files, corpus token cache, validation split, nested training sets,
# frozen token embeddings.


rule tokenizer:
    output:
        vocab="results/{study}/data/tokenizer/vocab.json",
        merges="results/{study}/data/tokenizer/merges.txt",
    params:
        source=config["tokenizer"],
    log:
        "results/{study}/logs/tokenizer.log",
    localrule: True
    script:
        "../workflow_scripts/tokenizer.py"


rule cache_corpus:
    input:
        vocab=rules.tokenizer.output.vocab,
        merges=rules.tokenizer.output.merges,
    output:
        tokens="results/{study}/data/corpus/tokens.npy",
        offsets="results/{study}/data/corpus/offsets.npy",
        manifest="results/{study}/data/corpus/manifest.json",
    params:
        corpus=config["corpus"],
    log:
        "results/{study}/logs/cache_corpus.log",
    benchmark:
        "results/{study}/benchmarks/cache_corpus.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../workflow_scripts/cache_corpus.py"


rule make_validation:
    input:
        tokens=rules.cache_corpus.output.tokens,
        offsets=rules.cache_corpus.output.offsets,
        manifest=rules.cache_corpus.output.manifest,
    output:
        validation="results/{study}/data/validation.npy",
        validation_meta="results/{study}/data/validation.json",
        pool="results/{study}/data/train_pool.npy",
        pool_meta="results/{study}/data/train_pool.json",
    params:
        num_samples=config["validation"]["num_samples"],
        max_train_samples=max(SAMPLE_SIZES),
        seed=config["seed"],
    log:
        "results/{study}/logs/make_validation.log",
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/make_validation.py"


rule make_train_set:
    input:
        pool=rules.make_validation.output.pool,
        pool_meta=rules.make_validation.output.pool_meta,
        validation=rules.make_validation.output.validation,
        validation_meta=rules.make_validation.output.validation_meta,
    output:
        tokens="results/{study}/data/train/samples{samples}.npy",
        meta="results/{study}/data/train/samples{samples}.json",
    params:
        require_full_coverage=config["validation"]["require_full_coverage"],
    log:
        "results/{study}/logs/make_train_set/samples{samples}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/make_train_set.py"


rule token_embeddings:
    input:
        pool=rules.make_validation.output.pool,
        pool_meta=rules.make_validation.output.pool_meta,
    output:
        weights="results/{study}/embeddings/token_embeddings.safetensors",
        meta="results/{study}/embeddings/token_embeddings.json",
    params:
        embeddings=config["embeddings"],
        seed=config["seed"],
    log:
        "results/{study}/logs/token_embeddings.log",
    benchmark:
        "results/{study}/benchmarks/token_embeddings.tsv"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=60,
    script:
        "../workflow_scripts/token_embeddings.py"
