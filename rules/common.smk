# Configuration, validation and the list of final outputs.  No torch import here: every
# dry run parses this file.
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

# newllm importable in every job, whichever environment runs it (conda or not)
sys.path.insert(0, str(Path(workflow.basedir)))
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (str(Path(workflow.basedir)), os.environ.get("PYTHONPATH")) if p
    )
)
from newllm.config import (
    ConfigError,
    check_config,
    load_schema,
    resolve_variant,
)  # noqa: E402

SCHEMA_PATH = Path(workflow.basedir) / "config" / "schema.yaml"
validate(config, schema=str(SCHEMA_PATH))  # fills schema defaults into config
SCHEMA = load_schema(SCHEMA_PATH)
STUDY = config["study"]
try:
    check_config(
        config,
        SCHEMA,
        corpus_manifest=Path("results", STUDY, "data", "corpus", "manifest.json"),
    )
    RUN_CONFIG = {v: resolve_variant(config, v, SCHEMA) for v in config["variants"]}
except ConfigError as err:
    raise WorkflowError(f"invalid configuration: {err}") from None

SAMPLE_SIZES = sorted(config["sample_sizes"])
CONTEXT_DIMS = sorted(config["context_dims"])
VARIANTS = list(config["variants"])


def alternatives(values):
    """A wildcard constraint matching exactly the given values."""
    return "|".join(str(v) for v in values)


def run_params(wildcards):
    """Resolved model/phase1/phase2 sections of one run, plus the run's identity."""
    resolved = RUN_CONFIG[wildcards.variant]
    return {
        **resolved,
        "model": {**resolved["model"], "context_dim": int(wildcards.context_dim)},
        "run": {
            "study": STUDY,
            "variant": wildcards.variant,
            "samples": int(wildcards.samples),
            "context_dim": int(wildcards.context_dim),
        },
        "seed": config["seed"],
        "device": config["device"],
    }


GPUS = 1 if config["device"].startswith("cuda") else 0
"""GPUs a training job asks for when config.device names CUDA (the SLURM profile sets
gpu=1 for the training rules whatever the device; `auto` then uses it)."""


def memory_mb(base_mb):
    """``mem_mb`` that doubles with every retry (attempt 1, 2, 3, …)."""
    return lambda wildcards, attempt: base_mb * 2 ** (attempt - 1)


def run_outputs(pattern):
    """``pattern`` expanded over every run of the study (variant × samples × context_dim)."""
    return expand(
        pattern,
        study=STUDY,
        variant=VARIANTS,
        samples=SAMPLE_SIZES,
        context_dim=CONTEXT_DIMS,
    )


def final_outputs():
    """Everything the default target builds: tables and figures of the study."""
    return expand(
        [
            "results/{study}/tables/runs.csv",
            "results/{study}/tables/scaling_fits.csv",
            "results/{study}/tables/data_coverage.csv",
            "results/{study}/figures/scaling.png",
            "results/{study}/figures/phase1_curves.png",
            "results/{study}/figures/phase2_curves.png",
            "results/{study}/tables/diagnostics.csv",
            "results/{study}/tables/sliding_alpha.csv",
            "results/{study}/tables/comparison.csv",
            "results/{study}/tables/prediction_correlations.csv",
            "results/{study}/figures/sliding_alpha.png",
            "results/{study}/figures/er_vs_ppl.png",
            "results/{study}/figures/effective_rank.png",
            "results/{study}/figures/parameter_efficiency.png",
        ],
        study=STUDY,
    )
