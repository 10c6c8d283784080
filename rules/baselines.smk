# Baseline language models: the count and standalone neural models of the catalogue
# (newllm/study.py), on the same training, dev and test tokens as cvfp.  The neural ones
# use the frozen embeddings and tied head and are parameter-matched to the cvfp run.
# Memory (MB) and wall time (min) per attempt: profiles/default/.


rule ngram:
    input:
        train=rules.make_train_set.output.tokens,
        train_meta=rules.make_train_set.output.meta,
        dev=rules.make_heldout.output.dev,
        dev_meta=rules.make_heldout.output.dev_meta,
        test=rules.make_heldout.output.test,
        test_meta=rules.make_heldout.output.test_meta,
        embedding_pool=rules.make_heldout.output.embedding_pool,
        embedding_pool_meta=rules.make_heldout.output.embedding_pool_meta,
    output:
        metrics=f"{RUN_DIR}/lm/metrics.json",
        test_nll=f"{RUN_DIR}/lm/test_token_nll.npy",
        history=f"{RUN_DIR}/lm/history.csv",
    log:
        log_path("ngram", RUN_NAME),
    benchmark:
        benchmark_path("ngram", RUN_NAME)
    wildcard_constraints:
        model=model_constraint(family="count"),
        context_dim="0",
    conda:
        "../envs/newllm.yaml"
    threads: 1  # numpy/scipy.sparse counting runs on one core
    params:
        run=run_params,
        baselines=config["baselines"],
        # whether the model counts the embedding slice before the training tokens:
        # ngram_slice does (the neural models' data), every other count model does not
        slice=lambda wildcards: wildcards.model == "ngram_slice",
        code=code_hash("ngram"),
    script:
        "../workflow_scripts/ngram.py"


rule baseline_lm:
    input:
        unpack(tuning_choice),
        train=rules.make_train_set.output.tokens,
        train_meta=rules.make_train_set.output.meta,
        dev=rules.make_heldout.output.dev,
        dev_meta=rules.make_heldout.output.dev_meta,
        test=rules.make_heldout.output.test,
        test_meta=rules.make_heldout.output.test_meta,
        embeddings=rules.token_embeddings.output.weights,
    output:
        metrics=f"{RUN_DIR}/lm/metrics.json",
        test_nll=f"{RUN_DIR}/lm/test_token_nll.npy",
        history=f"{RUN_DIR}/lm/history.csv",
    log:
        log_path("baseline_lm", RUN_NAME),
    benchmark:
        benchmark_path("baseline_lm", RUN_NAME)
    wildcard_constraints:
        model=model_constraint(family="lm"),
    conda:
        "../envs/newllm.yaml"
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS,
    params:
        run=run_params,
        baselines=config["baselines"],
        checkpoints=CHECKPOINT_STORE,
        code=code_hash("train_baseline"),
    script:
        "../workflow_scripts/train_baseline.py"
