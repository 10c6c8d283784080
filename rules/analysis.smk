# Analyses after all runs: the tidy runs table, the test-set bootstrap, scaling
# fits, baselines, comparisons, the verdict and the figures (drawn from tables alone).
# Inputs from rules/common.smk: RUNS (every run, fixed order), lm_outputs(name) (a file of
# every run's final folder, RUNS order) and cvfp_outputs(pattern, models) (CVFP-family files).

CONTEXT_MODELS = models_where(context=("phase1", "untrained"))
"""Models with their own ContextBlock: Phase 1 metrics, a context cache and diagnostics."""
TRAINED_HISTORIES = [
    f"{r['dir']}/{r['final']}/history.csv"
    for r in RUNS
    if study.get_model(r["model"]).family != "count"
]
"""history.csv of every trained run (all but the count models), in RUNS order."""
BOOTSTRAP = {
    "resamples": config["analysis"].get("bootstrap_resamples", 1000),
    "seed": config["analysis"].get("bootstrap_seed", 0),
    "resample_seeds": config["analysis"].get("resample_seeds", True),
}
RUN_FIGURE = study.RUN_FOLDER.removeprefix("runs/") + ".png"
"""Per-run figure inside a figure folder (newllm.plots.run_figure_name)."""
RUN_LABELS = {
    "model": "{model}",
    "variant": "{variant}",
    "samples": "{samples}",
    "context_dim": "{context_dim}",
    "seed": "{seed}",
}


rule collect_runs:
    input:
        metrics=lm_outputs("metrics.json"),
        phase1=cvfp_outputs(rules.phase1.output.metrics, models=CONTEXT_MODELS),
        cache=cvfp_outputs(rules.export_contexts.output.meta, models=CONTEXT_MODELS),
        diagnostics=cvfp_outputs(
            rules.phase1_diagnostics.output[0], models=CONTEXT_MODELS
        ),
        phase1_history=cvfp_outputs(rules.phase1.output.history),
        history=TRAINED_HISTORIES,
    output:
        runs=report(
            "results/{study}/tables/runs.csv",
            caption="../report/runs.rst",
            category="Overview",
        ),
        diagnostics=report(
            "results/{study}/tables/diagnostics.csv",
            caption="../report/diagnostics.rst",
            category="Diagnostics",
        ),
        phase1_history="results/{study}/tables/phase1_history.csv",
        training_history="results/{study}/tables/training_history.csv",
    log:
        log_path("collect_runs"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("collect_runs"),
    script:
        "../workflow_scripts/collect_runs.py"


rule data_coverage:
    input:
        train_meta=expand(
            rules.make_train_set.output.meta,
            study=STUDY,
            samples=SAMPLE_SIZES,
            seed=SEEDS,
        ),
        embeddings_meta=rules.token_embeddings.output.meta,
    output:
        report(
            "results/{study}/tables/data_coverage.csv",
            caption="../report/data_coverage.rst",
            category="Data",
        ),
    log:
        log_path("data_coverage"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("data_coverage"),
    script:
        "../workflow_scripts/data_coverage.py"


rule bootstrap_test:
    input:
        runs=rules.collect_runs.output.runs,
        nll=lm_outputs("test_token_nll.npy"),
        head_nll=rules.token_embeddings.output.test_token_nll,
        test_meta=rules.make_heldout.output.test_meta,
    output:
        points="results/{study}/bootstrap/points.csv",
        point_losses="results/{study}/bootstrap/point_losses.npy",
        head_losses="results/{study}/bootstrap/head_losses.npy",
        runs="results/{study}/bootstrap/run_intervals.csv",
        info="results/{study}/bootstrap/bootstrap.json",
        paired_gains="results/{study}/bootstrap/paired_gains.csv",
    log:
        log_path("bootstrap_test"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        **BOOTSTRAP,
        code=code_hash("bootstrap_test"),
    script:
        "../workflow_scripts/bootstrap_test.py"


rule fit_scaling:
    input:
        points=rules.bootstrap_test.output.points,
        point_losses=rules.bootstrap_test.output.point_losses,
    output:
        fits=report(
            "results/{study}/tables/scaling_fits.csv",
            caption="../report/scaling_fits.rst",
            category="Scaling",
        ),
        model_fits=report(
            "results/{study}/tables/model_fits.csv",
            caption="../report/model_fits.rst",
            category="Overview",
        ),
        extrapolations=report(
            "results/{study}/tables/extrapolations.csv",
            caption="../report/extrapolations.rst",
            category="Scaling",
        ),
        curves="results/{study}/tables/scaling_curves.csv",
        alpha_differences=report(
            "results/{study}/tables/alpha_differences.csv",
            caption="../report/scaling_alpha_differences.rst",
            category="Scaling",
        ),
    log:
        log_path("fit_scaling"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        reference_variant=BASE_VARIANT,
        code=code_hash("fit_scaling"),
    script:
        "../workflow_scripts/fit_scaling.py"


rule baselines:
    input:
        points=rules.bootstrap_test.output.points,
        point_losses=rules.bootstrap_test.output.point_losses,
    output:
        baselines=report(
            "results/{study}/tables/baselines.csv",
            caption="../report/baselines.rst",
            category="Overview",
        ),
        ratios=report(
            "results/{study}/tables/ppl_ratio.csv",
            caption="../report/ppl_ratio_table.rst",
            category="Overview",
        ),
    log:
        log_path("baselines"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        reference_variant=BASE_VARIANT,
        code=code_hash("baselines"),
    script:
        "../workflow_scripts/baselines.py"


rule memory_tables:
    input:
        diagnostics=cvfp_outputs(
            rules.phase1_diagnostics.output[0],
            models=models_where(context=("phase1", "untrained")),
        ),
        usable=cvfp_outputs(
            rules.usable_memory.output[0], models=models_where(context="phase1")
        ),
    output:
        table=report(
            "results/{study}/tables/memory_probe.csv",
            caption="../report/memory_probe.rst",
            category="Memory",
        ),
        curves="results/{study}/tables/memory_probe_curves.csv",
        usable=report(
            "results/{study}/tables/usable_memory.csv",
            caption="../report/usable_memory.rst",
            category="Memory",
        ),
        usable_summary=report(
            "results/{study}/tables/usable_memory_summary.csv",
            caption="../report/usable_memory.rst",
            category="Memory",
        ),
    log:
        log_path("memory_tables"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("memory_tables"),
    script:
        "../workflow_scripts/memory_tables.py"


rule plot_memory:
    input:
        curves=rules.memory_tables.output.curves,
        usable=rules.memory_tables.output.usable,
    output:
        figure=report(
            "results/{study}/figures/memory.png",
            caption="../report/memory_probe.rst",
            category="Memory",
        ),
        figure_svg="results/{study}/figures/memory.svg",
    log:
        log_path("plot_memory"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("plot_memory"),
    script:
        "../workflow_scripts/plot_memory.py"


rule prediction:
    input:
        runs=rules.collect_runs.output.runs,
    output:
        correlations=report(
            "results/{study}/tables/prediction_correlations.csv",
            caption="../report/prediction_correlations.rst",
            category="Prediction",
        ),
        models="results/{study}/tables/prediction_models.json",
    log:
        log_path("prediction"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("prediction"),
    script:
        "../workflow_scripts/prediction.py"


rule verdict:
    input:
        runs=rules.collect_runs.output.runs,
        points=rules.bootstrap_test.output.points,
        point_losses=rules.bootstrap_test.output.point_losses,
        info=rules.bootstrap_test.output.info,
        fits=rules.fit_scaling.output.fits,
        embeddings_meta=rules.token_embeddings.output.meta,
        head_losses=rules.bootstrap_test.output.head_losses,
        paired_gains=rules.bootstrap_test.output.paired_gains,
        prediction=rules.prediction.output.correlations,
        usable_memory=rules.memory_tables.output.usable_summary,
        # the tuning table, with config tuning.enabled (rules/tuning.smk)
        tuning=rules.tuning_table.output[0] if TUNING else [],
    output:
        html=report(
            "results/{study}/tables/verdict.html",
            caption="../report/verdict.rst",
            category="Overview",
        ),
        markdown="results/{study}/tables/verdict.md",
        json="results/{study}/tables/verdict.json",
    log:
        log_path("verdict"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        reference_variant=BASE_VARIANT,
        design={k: config[k] for k in ("corpus", "embeddings")},
        code=code_hash("verdict"),
    script:
        "../workflow_scripts/verdict.py"


rule plot_scaling:
    input:
        baselines=rules.baselines.output.baselines,
        ratios=rules.baselines.output.ratios,
        fits=rules.fit_scaling.output.fits,
        curves=rules.fit_scaling.output.curves,
        embeddings_meta=rules.token_embeddings.output.meta,
    output:
        scaling=report(
            "results/{study}/figures/scaling.png",
            caption="../report/scaling.rst",
            category="Scaling",
        ),
        scaling_svg="results/{study}/figures/scaling.svg",
        ratio=report(
            "results/{study}/figures/ppl_ratio.png",
            caption="../report/ppl_ratio.rst",
            category="Overview",
        ),
        ratio_svg="results/{study}/figures/ppl_ratio.svg",
    log:
        log_path("plot_scaling"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("plot_scaling"),
    script:
        "../workflow_scripts/plot_scaling.py"


rule plot_phase1:
    input:
        history=rules.collect_runs.output.phase1_history,
    output:
        overview=report(
            "results/{study}/figures/phase1_curves.png",
            caption="../report/phase1_curves.rst",
            category="Phase 1",
        ),
        overview_svg="results/{study}/figures/phase1_curves.svg",
        runs=report(
            directory("results/{study}/figures/phase1_runs"),
            patterns=[RUN_FIGURE],
            caption="../report/phase1_run.rst",
            category="Phase 1",
            subcategory="Phase 1 per run: {model} {variant}",
            labels=RUN_LABELS,
        ),
    log:
        log_path("plot_phase1"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("plot_phase1"),
    script:
        "../workflow_scripts/plot_phase1.py"


rule plot_phase2:
    input:
        history=rules.collect_runs.output.training_history,
    output:
        overview=report(
            "results/{study}/figures/phase2_curves.png",
            caption="../report/phase2_curves.rst",
            category="Phase 2",
        ),
        overview_svg="results/{study}/figures/phase2_curves.svg",
        runs=report(
            directory("results/{study}/figures/training_runs"),
            patterns=[RUN_FIGURE],
            caption="../report/training_run.rst",
            category="Phase 2",
            subcategory="Learning curves per run: {model} {variant}",
            labels=RUN_LABELS,
        ),
    log:
        log_path("plot_phase2"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("plot_phase2"),
    script:
        "../workflow_scripts/plot_phase2.py"


rule sliding_alpha:
    input:
        points=rules.bootstrap_test.output.points,
        point_losses=rules.bootstrap_test.output.point_losses,
    output:
        report(
            "results/{study}/tables/sliding_alpha.csv",
            caption="../report/sliding_alpha_table.rst",
            category="Scaling",
        ),
    log:
        log_path("sliding_alpha"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        window=config["analysis"]["window_size"],
        step=config["analysis"]["window_step"],
        code=code_hash("sliding_alpha"),
    script:
        "../workflow_scripts/sliding_alpha.py"


rule comparisons:
    input:
        runs=rules.collect_runs.output.runs,
        points=rules.bootstrap_test.output.points,
        point_losses=rules.bootstrap_test.output.point_losses,
        fits=rules.fit_scaling.output.fits,
    output:
        report(
            "results/{study}/tables/comparison.csv",
            caption="../report/comparison.rst",
            category="Overview",
        ),
    log:
        log_path("comparisons"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("comparisons"),
    script:
        "../workflow_scripts/comparisons.py"


rule plot_analysis:
    input:
        runs=rules.collect_runs.output.runs,
        windows=rules.sliding_alpha.output[0],
        comparison=rules.comparisons.output[0],
        baselines=rules.baselines.output.baselines,
        correlations=rules.prediction.output.correlations,
        paired_gains=rules.bootstrap_test.output.paired_gains,
    output:
        forest=report(
            "results/{study}/figures/forest.png",
            caption="../report/forest.rst",
            category="Overview",
        ),
        forest_svg="results/{study}/figures/forest.svg",
        sliding=report(
            "results/{study}/figures/sliding_alpha.png",
            caption="../report/sliding_alpha.rst",
            category="Scaling",
        ),
        sliding_svg="results/{study}/figures/sliding_alpha.svg",
        er_vs_ppl=report(
            "results/{study}/figures/er_vs_ppl.png",
            caption="../report/er_vs_ppl.rst",
            category="Prediction",
        ),
        er_vs_ppl_svg="results/{study}/figures/er_vs_ppl.svg",
        er_by_dim=report(
            "results/{study}/figures/effective_rank.png",
            caption="../report/effective_rank.rst",
            category="Phase 1",
        ),
        er_by_dim_svg="results/{study}/figures/effective_rank.svg",
        efficiency=report(
            "results/{study}/figures/parameter_efficiency.png",
            caption="../report/parameter_efficiency.rst",
            category="Overview",
        ),
        efficiency_svg="results/{study}/figures/parameter_efficiency.svg",
    log:
        log_path("plot_analysis"),
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        code=code_hash("plot_analysis"),
    script:
        "../workflow_scripts/plot_analysis.py"


rule analysis:
    """Target: every table and figure of the analysis (`snakemake analysis`)."""
    input:
        expand(
            [
                "results/{study}/tables/runs.csv",
                "results/{study}/tables/diagnostics.csv",
                "results/{study}/tables/data_coverage.csv",
                "results/{study}/tables/verdict.html",
                "results/{study}/tables/baselines.csv",
                "results/{study}/tables/ppl_ratio.csv",
                "results/{study}/tables/model_fits.csv",
                "results/{study}/tables/scaling_fits.csv",
                "results/{study}/tables/extrapolations.csv",
                "results/{study}/tables/sliding_alpha.csv",
                "results/{study}/tables/comparison.csv",
                "results/{study}/tables/prediction_correlations.csv",
                "results/{study}/figures/scaling.png",
                "results/{study}/figures/ppl_ratio.png",
                "results/{study}/figures/phase1_curves.png",
                "results/{study}/figures/phase2_curves.png",
                "results/{study}/figures/sliding_alpha.png",
                "results/{study}/figures/er_vs_ppl.png",
                "results/{study}/figures/effective_rank.png",
                "results/{study}/figures/parameter_efficiency.png",
                "results/{study}/figures/forest.png",
            ],
            study=STUDY,
        ),
        # the tuning trials and choices (rules/tuning.smk), with config tuning.enabled
        expand(rules.tuning_table.output, study=STUDY) if TUNING else [],
