# Analyses after all runs: tidy tables, scaling fits, figures (drawn from tables alone).


rule collect_runs:
    input:
        phase1=run_outputs(rules.phase1.output.metrics),
        cache=run_outputs(rules.export_contexts.output.meta),
        phase2=run_outputs(rules.phase2.output.metrics),
        phase1_history=run_outputs(rules.phase1.output.history),
        phase2_history=run_outputs(rules.phase2.output.history),
    output:
        runs=report(
            "results/{study}/tables/runs.csv",
            caption="../report/runs.rst",
            category="Tables",
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
