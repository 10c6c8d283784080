# Phase 1 (CVFP training of the ContextBlock), the context-cache export and the Phase 1
# diagnostics, per run.  untrained_context runs the same rules with the ContextBlock at
# its initialisation (no Phase 1 step): a random recurrent map (reservoir) as control;
# reset_context exports cvfp's trained ContextBlock applied to a zero previous context;
# lstm_states exports the hidden states of an LSTM LM trained on the same tokens.


rule phase1:
    input:
        train=rules.make_train_set.output.tokens,
        train_meta=rules.make_train_set.output.meta,
        dev=rules.make_heldout.output.dev,
        dev_meta=rules.make_heldout.output.dev_meta,
        embeddings=rules.token_embeddings.output.weights,
    output:
        weights=f"{RUN_DIR}/phase1/context_block.safetensors",
        metrics=f"{RUN_DIR}/phase1/metrics.json",
        history=f"{RUN_DIR}/phase1/history.csv",
    log:
        log_path("phase1", RUN_NAME),
    benchmark:
        benchmark_path("phase1", RUN_NAME)
    wildcard_constraints:
        model=model_constraint(context=("phase1", "untrained")),
    conda:
        "../envs/newllm.yaml"
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS,
    params:
        run=run_params,
        checkpoints=CHECKPOINT_STORE,
        code=code_hash("phase1"),
    script:
        "../workflow_scripts/phase1.py"


rule state_producer:
    input:
        train=rules.make_train_set.output.tokens,
        train_meta=rules.make_train_set.output.meta,
        dev=rules.make_heldout.output.dev,
        dev_meta=rules.make_heldout.output.dev_meta,
        embeddings=rules.token_embeddings.output.weights,
    output:
        weights=f"{RUN_DIR}/producer/lstm.safetensors",
        metrics=f"{RUN_DIR}/producer/metrics.json",
        history=f"{RUN_DIR}/producer/history.csv",
    log:
        log_path("state_producer", RUN_NAME),
    benchmark:
        benchmark_path("state_producer", RUN_NAME)
    wildcard_constraints:
        model=model_constraint(context="lm_states"),
    conda:
        "../envs/newllm.yaml"
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS,
    params:
        run=run_params,
        baselines=config["baselines"],
        checkpoints=CHECKPOINT_STORE,
        code=code_hash("state_producer"),
    script:
        "../workflow_scripts/state_producer.py"


rule export_contexts:
    input:
        unpack(context_weights),
        train=rules.make_train_set.output.tokens,
        train_meta=rules.make_train_set.output.meta,
        dev=rules.make_heldout.output.dev,
        dev_meta=rules.make_heldout.output.dev_meta,
        test=rules.make_heldout.output.test,
        test_meta=rules.make_heldout.output.test_meta,
        embeddings=rules.token_embeddings.output.weights,
    output:
        train=cache_output(ensure(f"{RUN_DIR}/context_cache/train.npy", non_empty=True)),
        dev=cache_output(ensure(f"{RUN_DIR}/context_cache/dev.npy", non_empty=True)),
        test=cache_output(ensure(f"{RUN_DIR}/context_cache/test.npy", non_empty=True)),
        meta=f"{RUN_DIR}/context_cache/cache.json",
    log:
        log_path("export_contexts", RUN_NAME),
    benchmark:
        benchmark_path("export_contexts", RUN_NAME)
    wildcard_constraints:
        model=model_constraint(context=("phase1", "untrained", "reset", "lm_states")),
    conda:
        "../envs/newllm.yaml"
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS,
    params:
        run=run_params,
        context=context_source,
        cache=CONTEXT_CACHE_SETTINGS,
        code=code_hash("export_contexts"),
    script:
        "../workflow_scripts/export_contexts.py"


rule phase1_diagnostics:
    input:
        weights=rules.phase1.output.weights,
        metrics=rules.phase1.output.metrics,
        dev=rules.make_heldout.output.dev,
        dev_meta=rules.make_heldout.output.dev_meta,
        dev_cache=rules.export_contexts.output.dev,
        cache_meta=rules.export_contexts.output.meta,
        embeddings=rules.token_embeddings.output.weights,
    output:
        f"{RUN_DIR}/diagnostics/phase1_diagnostics.json",
    log:
        log_path("phase1_diagnostics", RUN_NAME),
    wildcard_constraints:
        model=model_constraint(context=("phase1", "untrained")),
    conda:
        "../envs/newllm.yaml"
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS,
    params:
        run=run_params,
        diagnostics=config["diagnostics"],
        code=code_hash("phase1_diagnostics"),
    script:
        "../workflow_scripts/phase1_diagnostics.py"
