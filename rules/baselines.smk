# Baseline language models (issue 9): interpolated Kneser-Ney n-gram, LSTM and
# Transformer, on the same training, dev and test tokens as cvfp.  The neural ones use
# the frozen embeddings and tied head and are parameter-matched to the cvfp run.
# Memory (MB) and wall time (min) per attempt: profiles/default/.


rule ngram:
    input:
        train="results/{study}/data/train/samples{samples}.npy",
        train_meta="results/{study}/data/train/samples{samples}.json",
        dev="results/{study}/data/dev.npy",
        dev_meta="results/{study}/data/dev.json",
        test="results/{study}/data/test.npy",
        test_meta="results/{study}/data/test.json",
    output:
        metrics="results/{study}/runs/ngram/{variant}/samples{samples}_ctx0_seed0/lm/metrics.json",
        test_nll="results/{study}/runs/ngram/{variant}/samples{samples}_ctx0_seed0/lm/test_token_nll.npy",
        history="results/{study}/runs/ngram/{variant}/samples{samples}_ctx0_seed0/lm/history.csv",
    log:
        log_path("ngram", "ngram_{variant}_samples{samples}_ctx0_seed0"),
    benchmark:
        benchmark_path("ngram", "ngram_{variant}_samples{samples}_ctx0_seed0")
    conda:
        "../envs/newllm.yaml"
    threads: 1  # numpy/scipy.sparse counting runs on one core
    params:
        run=ngram_run_params,
        baselines=config["baselines"],
        code=code_hash("ngram"),
    script:
        "../workflow_scripts/ngram.py"


rule baseline_lm:
    input:
        train="results/{study}/data/train/samples{samples}.npy",
        train_meta="results/{study}/data/train/samples{samples}.json",
        dev="results/{study}/data/dev.npy",
        dev_meta="results/{study}/data/dev.json",
        test="results/{study}/data/test.npy",
        test_meta="results/{study}/data/test.json",
        embeddings="results/{study}/embeddings/token_embeddings.safetensors",
    output:
        metrics=f"{RUN_DIR}/lm/metrics.json",
        test_nll=f"{RUN_DIR}/lm/test_token_nll.npy",
        history=f"{RUN_DIR}/lm/history.csv",
    log:
        log_path("baseline_lm", RUN_NAME),
    benchmark:
        benchmark_path("baseline_lm", RUN_NAME)
    wildcard_constraints:
        model="lstm|transformer",
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
