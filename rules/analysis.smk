# Analyses after all runs: tidy tables, scaling fits, figures (drawn from tables alone).


rule collect_runs:
    input:
        phase1=run_outputs(rules.phase1.output.metrics),
        cache=run_outputs(rules.export_contexts.output.meta),
        phase2=run_outputs(rules.phase2.output.metrics),
        diagnostics=run_outputs(rules.phase1_diagnostics.output[0]),
        phase1_history=run_outputs(rules.phase1.output.history),
        phase2_history=run_outputs(rules.phase2.output.history),
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
        phase2_history="results/{study}/tables/phase2_history.csv",
    log:
        "results/{study}/logs/collect_runs.log",
    localrule: True
    conda:
        "../envs/newllm.yaml"
    script:
        "../workflow_scripts/collect_runs.py"


rule data_coverage:
    input:
        train_meta=expand(
            rules.make_train_set.output.meta, study=STUDY, samples=SAMPLE_SIZES
        ),
    output:
        report(
            "results/{study}/tables/data_coverage.csv",
            caption="../report/data_coverage.rst",
            category="Data",
        ),
    log:
        "results/{study}/logs/data_coverage.log",
    localrule: True
    conda:
        "../envs/newllm.yaml"
    script:
        "../workflow_scripts/data_coverage.py"


rule fit_scaling:
    input:
        runs=rules.collect_runs.output.runs,
    output:
        report(
            "results/{study}/tables/scaling_fits.csv",
            caption="../report/scaling_fits.rst",
            category="Scaling",
        ),
    log:
        "results/{study}/logs/fit_scaling.log",
    localrule: True
    conda:
        "../envs/newllm.yaml"
    script:
        "../workflow_scripts/fit_scaling.py"


rule plot_scaling:
    input:
        runs=rules.collect_runs.output.runs,
        fits=rules.fit_scaling.output[0],
    output:
        report(
            "results/{study}/figures/scaling.png",
            caption="../report/scaling.rst",
            category="Scaling",
        ),
    log:
        "results/{study}/logs/plot_scaling.log",
    localrule: True
    conda:
        "../envs/newllm.yaml"
    script:
        "../workflow_scripts/plot_scaling.py"


rule plot_phase1:
    input:
        history=rules.collect_runs.output.phase1_history,
    output:
        report(
            "results/{study}/figures/phase1_curves.png",
            caption="../report/phase1_curves.rst",
            category="Phase 1",
        ),
    log:
        "results/{study}/logs/plot_phase1.log",
    localrule: True
    conda:
        "../envs/newllm.yaml"
    script:
        "../workflow_scripts/plot_phase1.py"


rule plot_phase2:
    input:
        history=rules.collect_runs.output.phase2_history,
    output:
        report(
            "results/{study}/figures/phase2_curves.png",
            caption="../report/phase2_curves.rst",
            category="Phase 2",
        ),
    log:
        "results/{study}/logs/plot_phase2.log",
    localrule: True
    conda:
        "../envs/newllm.yaml"
    script:
        "../workflow_scripts/plot_phase2.py"


rule sliding_alpha:
    input:
        runs=rules.collect_runs.output.runs,
    output:
        report(
            "results/{study}/tables/sliding_alpha.csv",
            caption="../report/sliding_alpha_table.rst",
            category="Scaling",
        ),
    log:
        "results/{study}/logs/sliding_alpha.log",
    localrule: True
    conda:
        "../envs/newllm.yaml"
    params:
        window=config["analysis"]["window_size"],
        step=config["analysis"]["window_step"],
    script:
        "../workflow_scripts/sliding_alpha.py"


rule comparisons:
    input:
        runs=rules.collect_runs.output.runs,
        fits=rules.fit_scaling.output[0],
    output:
        report(
            "results/{study}/tables/comparison.csv",
            caption="../report/comparison.rst",
            category="Overview",
        ),
    log:
        "results/{study}/logs/comparisons.log",
    localrule: True
    conda:
        "../envs/newllm.yaml"
    script:
        "../workflow_scripts/comparisons.py"


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
        "results/{study}/logs/prediction.log",
    localrule: True
    conda:
        "../envs/newllm.yaml"
    script:
        "../workflow_scripts/prediction.py"


rule plot_analysis:
    input:
        runs=rules.collect_runs.output.runs,
        windows=rules.sliding_alpha.output[0],
        comparison=rules.comparisons.output[0],
        models=rules.prediction.output.models,
    output:
        sliding=report(
            "results/{study}/figures/sliding_alpha.png",
            caption="../report/sliding_alpha.rst",
            category="Scaling",
        ),
        er_vs_ppl=report(
            "results/{study}/figures/er_vs_ppl.png",
            caption="../report/er_vs_ppl.rst",
            category="Prediction",
        ),
        er_by_dim=report(
            "results/{study}/figures/effective_rank.png",
            caption="../report/effective_rank.rst",
            category="Phase 1",
        ),
        efficiency=report(
            "results/{study}/figures/parameter_efficiency.png",
            caption="../report/parameter_efficiency.rst",
            category="Phase 2",
        ),
    log:
        "results/{study}/logs/plot_analysis.log",
    localrule: True
    conda:
        "../envs/newllm.yaml"
    script:
        "../workflow_scripts/plot_analysis.py"
