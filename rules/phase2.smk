# Phase 2: TokenBlock training on the cached contexts with the tied frozen head, per run
# of every context-family model of the catalogue (newllm/study.py); a model without a
# cache (no_context) trains the same TokenBlock with the context input fixed to zero.


rule phase2:
    input:
        unpack(phase2_caches),
        unpack(tuning_choice),
        train_tokens=rules.make_train_set.output.tokens,
        train_meta=rules.make_train_set.output.meta,
        dev_tokens=rules.make_heldout.output.dev,
        dev_meta=rules.make_heldout.output.dev_meta,
        test_tokens=rules.make_heldout.output.test,
        test_meta=rules.make_heldout.output.test_meta,
        embeddings=rules.token_embeddings.output.weights,
    output:
        weights=f"{RUN_DIR}/phase2/token_block.safetensors",
        metrics=f"{RUN_DIR}/phase2/metrics.json",
        history=f"{RUN_DIR}/phase2/history.csv",
        test_token_nll=f"{RUN_DIR}/phase2/test_token_nll.npy",
    log:
        log_path("phase2", RUN_NAME),
    benchmark:
        benchmark_path("phase2", RUN_NAME)
    wildcard_constraints:
        model=model_constraint(family="context"),
    conda:
        "../envs/newllm.yaml"
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS,
    params:
        run=run_params,
        checkpoints=CHECKPOINT_STORE,
        code=code_hash("phase2"),
    script:
        "../workflow_scripts/phase2.py"


rule usable_memory:
    input:
        context_weights=rules.phase1.output.weights,
        token_weights=rules.phase2.output.weights,
        test=rules.make_heldout.output.test,
        test_meta=rules.make_heldout.output.test_meta,
        test_cache=rules.export_contexts.output.test,
        embeddings=rules.token_embeddings.output.weights,
    output:
        f"{RUN_DIR}/diagnostics/usable_memory.json",
    log:
        log_path("usable_memory", RUN_NAME),
    benchmark:
        benchmark_path("usable_memory", RUN_NAME)
    wildcard_constraints:
        model=model_constraint(context="phase1"),
    conda:
        "../envs/newllm.yaml"
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS,
    params:
        run=run_params,
        code=code_hash("usable_memory"),
    script:
        "../workflow_scripts/usable_memory.py"
