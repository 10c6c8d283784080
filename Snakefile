# New-LLM (CVFP) scaling pipeline.
#   snakemake --cores all                 run the study in config/config.yaml
#   snakemake -n                          dry-run: show the planned DAG
#   snakemake --report report.html        self-contained report with the figures
# See README.md.


from pathlib import Path


# the embedded default study; a --configfile study config is layered over it
# (nested keys merge, lists and scalars replace)
configfile: str(Path(workflow.basedir, "config", "config.yaml"))


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    study=STUDY,
    samples=alternatives(SAMPLE_SIZES),
    context_dim=alternatives(CONTEXT_DIMS),
    variant=alternatives(VARIANTS),
    model=alternatives(MODELS),
    seed=alternatives(SEEDS),
    trial=tuning.TRIAL_PATTERN,


include: "rules/retrieve.smk"
include: "rules/provenance.smk"
include: "rules/data.smk"
include: "rules/phase1.smk"
include: "rules/phase2.smk"
include: "rules/baselines.smk"
include: "rules/tuning.smk"
include: "rules/analysis.smk"
include: "rules/repetition.smk"


rule all:
    default_target: True
    input:
        rules.analysis.input,
        final_outputs(),
        rules.repetition.input,
        expand(rules.data_provenance.output, study=STUDY),
        expand(rules.checkpoint_store.output, study=STUDY),


onstart:
    print(
        f"New-LLM study {STUDY!r}: {len(RUNS)} runs of {len(MODELS)} model(s) x "
        f"{len(VARIANTS)} variant(s) x {len(SAMPLE_SIZES)} sample sizes x "
        f"{len(CONTEXT_DIMS)} context_dims x {len(SEEDS)} seed(s); results in results/{STUDY}/"
    )
