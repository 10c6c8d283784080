# Data: tokenizer files, corpus token cache, dev/test/embedding splits, nested training sets
# (one pool order per training seed), frozen token embeddings.


rule tokenizer:
    output:
        vocab="results/{study}/data/tokenizer/vocab.json",
        merges="results/{study}/data/tokenizer/merges.txt",
    log:
        log_path("tokenizer"),
    retries: 3  # a hub tokenizer is downloaded here
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        source=config["tokenizer"],
        code=code_hash("tokenizer"),
    script:
        "../workflow_scripts/tokenizer.py"


rule cache_corpus:
    input:
        **HUB_CORPUS_INPUT,
        vocab=rules.tokenizer.output.vocab,
        merges=rules.tokenizer.output.merges,
    output:
        tokens=ensure("results/{study}/data/corpus/tokens.npy", non_empty=True),
        offsets="results/{study}/data/corpus/offsets.npy",
        manifest="results/{study}/data/corpus/manifest.json",
    log:
        log_path("cache_corpus"),
    benchmark:
        benchmark_path("cache_corpus")
    conda:
        "../envs/newllm.yaml"
    threads: 2
    params:
        corpus=config["corpus"],
        code=code_hash("cache_corpus"),
    script:
        "../workflow_scripts/cache_corpus.py"


rule make_heldout:
    input:
        tokens=rules.cache_corpus.output.tokens,
        offsets=rules.cache_corpus.output.offsets,
        manifest=rules.cache_corpus.output.manifest,
    output:
        dev=ensure("results/{study}/data/dev.npy", non_empty=True),
        dev_meta="results/{study}/data/dev.json",
        test=ensure("results/{study}/data/test.npy", non_empty=True),
        test_meta="results/{study}/data/test.json",
        embedding_pool="results/{study}/data/embedding_pool.npy",
        embedding_pool_meta="results/{study}/data/embedding_pool.json",
        pool="results/{study}/data/train_pool.npy",
        pool_meta="results/{study}/data/train_pool.json",
    log:
        log_path("make_heldout"),
    conda:
        "../envs/newllm.yaml"
    params:
        sizes={
            "dev": config["validation"]["dev_samples"],
            "test": config["validation"]["test_samples"],
            "embedding": config["validation"]["embedding_samples"],
        },
        seed=config["validation"]["seed"],
        corpus=config["corpus"],
        code=code_hash("make_heldout"),
    script:
        "../workflow_scripts/make_heldout.py"


rule make_train_set:
    input:
        pool=rules.make_heldout.output.pool,
        pool_meta=rules.make_heldout.output.pool_meta,
        dev=rules.make_heldout.output.dev,
        dev_meta=rules.make_heldout.output.dev_meta,
        test=rules.make_heldout.output.test,
        test_meta=rules.make_heldout.output.test_meta,
    output:
        tokens=ensure(
            "results/{study}/data/train/seed{seed}/samples{samples}.npy",
            non_empty=True,
        ),
        meta="results/{study}/data/train/seed{seed}/samples{samples}.json",
    log:
        log_path("make_train_set", "seed{seed}_samples{samples}"),
    conda:
        "../envs/newllm.yaml"
    params:
        require_full_coverage=config["validation"]["require_full_coverage"],
        code=code_hash("make_train_set"),
    script:
        "../workflow_scripts/make_train_set.py"


rule token_embeddings:
    input:
        **GPT2_CHECKPOINT_INPUT,
        pool=rules.make_heldout.output.embedding_pool,
        pool_meta=rules.make_heldout.output.embedding_pool_meta,
        dev=rules.make_heldout.output.dev,
        dev_meta=rules.make_heldout.output.dev_meta,
        test=rules.make_heldout.output.test,
        test_meta=rules.make_heldout.output.test_meta,
    output:
        weights="results/{study}/embeddings/token_embeddings.safetensors",
        meta="results/{study}/embeddings/token_embeddings.json",
        test_token_nll="results/{study}/embeddings/test_token_nll.npy",
    log:
        log_path("token_embeddings"),
    benchmark:
        benchmark_path("token_embeddings")
    conda:
        "../envs/newllm.yaml"
    threads: 1
    params:
        embeddings=config["embeddings"],
        seed=config["validation"]["seed"],
        code=code_hash("token_embeddings"),
    script:
        "../workflow_scripts/token_embeddings.py"
