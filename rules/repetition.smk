# The repetition (CVFPT) study (docs/method.md §9): `snakemake repetition`.


rule repetition_study:
    input:
        pool=rules.make_heldout.output.pool,
        pool_meta=rules.make_heldout.output.pool_meta,
        embeddings=rules.token_embeddings.output.weights,
    output:
        stages=report(
            "results/{study}/repetition/stages.csv",
            caption="../report/repetition_stages_table.rst",
            category="Repetition",
        ),
        tokens=report(
            "results/{study}/repetition/topk_tokens.csv",
            caption="../report/repetition_tokens_table.rst",
            category="Repetition",
        ),
        distances="results/{study}/repetition/fixed_point_distances.csv",
        summary="results/{study}/repetition/summary.json",
    log:
        log_path("repetition_study"),
    benchmark:
        benchmark_path("repetition_study")
    conda:
        "../envs/newllm.yaml"
    threads: TRAINING_THREADS
    resources:
        gpu=GPUS,
    params:
        repetition=config["repetition"],
        model=config["model"],
        seed=SEEDS[0],
        device=config["device"],
        code=code_hash("repetition_study"),
    script:
        "../workflow_scripts/repetition_study.py"


rule plot_repetition:
    input:
        stages=rules.repetition_study.output.stages,
        tokens=rules.repetition_study.output.tokens,
        distances=rules.repetition_study.output.distances,
        summary=rules.repetition_study.output.summary,
    output:
        stages=report(
            "results/{study}/figures/repetition_stages.png",
            caption="../report/repetition_stages.rst",
            category="Repetition",
        ),
        tokens=report(
            "results/{study}/figures/repetition_topk.png",
            caption="../report/repetition_topk.rst",
            category="Repetition",
        ),
        distances=report(
            "results/{study}/figures/repetition_fixed_points.png",
            caption="../report/repetition_fixed_points.rst",
            category="Repetition",
        ),
        svgs=multiext(
            "results/{study}/figures/repetition_",
            "stages.svg",
            "topk.svg",
            "fixed_points.svg",
        ),
    log:
        log_path("plot_repetition"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("plot_repetition"),
    script:
        "../workflow_scripts/plot_repetition.py"


rule repetition:
    input:
        expand(rules.repetition_study.output, study=STUDY),
        expand(rules.plot_repetition.output, study=STUDY),
    localrule: True
