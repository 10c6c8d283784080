# The equal tuning budget (docs/method.md §10.5, newllm/tuning.py): with config
# tuning.enabled, every trained family — Phase 2 (trained on cvfp, read by every context
# model) and each standalone neural LM — trains the same grid of learning-rate factors x
# dropouts at one run; rule tuning_choice keeps the lowest dev loss, and every run of the
# family trains with that choice (rules phase2 and baseline_lm read its choice.json).
# A trial is never scored on test.


use rule phase2 as tune_phase2 with:
    output:
        weights=temp(f"{TUNING_DIR}/phase2/token_block.safetensors"),
        metrics=f"{TUNING_DIR}/phase2/metrics.json",
        history=f"{TUNING_DIR}/phase2/history.csv",
    log:
        log_path("tune_phase2", TRIAL_NAME),
    benchmark:
        benchmark_path("tune_phase2", TRIAL_NAME)
    params:
        run=run_params,
        checkpoints=CHECKPOINT_STORE,
        code=code_hash("phase2"),
        trial=lambda wildcards: wildcards.trial,


use rule baseline_lm as tune_baseline_lm with:
    output:
        metrics=f"{TUNING_DIR}/lm/metrics.json",
        history=f"{TUNING_DIR}/lm/history.csv",
    log:
        log_path("tune_baseline_lm", TRIAL_NAME),
    benchmark:
        benchmark_path("tune_baseline_lm", TRIAL_NAME)
    params:
        run=run_params,
        baselines=config["baselines"],
        checkpoints=CHECKPOINT_STORE,
        code=code_hash("train_baseline"),
        trial=lambda wildcards: wildcards.trial,


rule tuning_choice:
    input:
        metrics=trial_metrics,
    output:
        TUNING_CHOICE,
    log:
        log_path("tuning_choice", "{model}"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        trials=[trial.name for trial in TRIALS],
        tuning_run=TUNING_RUN,
        code=code_hash("tuning_choice"),
    script:
        "../workflow_scripts/tuning_choice.py"


rule tuning_table:
    input:
        choices=expand(rules.tuning_choice.output[0], study=STUDY, model=TUNED_MODELS),
    output:
        report(
            "results/{study}/tables/tuning.csv",
            caption="../report/tuning.rst",
            category="Overview",
        ),
    log:
        log_path("tuning_table"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("tuning_table"),
    script:
        "../workflow_scripts/tuning_table.py"
