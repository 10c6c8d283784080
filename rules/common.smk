# Configuration, validation and the list of final outputs.  No torch import here: every
# dry run parses this file.
import os
import posixpath
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
from newllm import study, tuning  # noqa: E402

SCHEMA_PATH = Path(workflow.basedir) / "config" / "schema.yaml"
validate(config, schema=str(SCHEMA_PATH))  # fills schema defaults into config
SCHEMA = load_schema(SCHEMA_PATH)
STUDY = config["study"]
# never rebuild an existing study from other data by accident (newllm.provenance)
from newllm.provenance import ProvenanceError, check_data_provenance  # noqa: E402

try:
    DATA_PROVENANCE = check_data_provenance(config, Path("results", STUDY))
except ProvenanceError as err:
    raise WorkflowError(str(err)) from None
try:
    check_config(
        config,
        SCHEMA,
        corpus_manifest=Path("results", STUDY, "data", "corpus", "manifest.json"),
    )
    RUN_CONFIG = {v: resolve_variant(config, v, SCHEMA) for v in config["variants"]}
    TUNING_RUN = tuning.tuning_run(config)
except (ConfigError, ValueError) as err:
    raise WorkflowError(f"invalid configuration: {err}") from None

SAMPLE_SIZES = sorted(config["sample_sizes"])
CONTEXT_DIMS = sorted(config["context_dims"])
VARIANTS = list(config["variants"])
SEEDS = list(config["seeds"])
MODELS = list(config["models"])
BASE_VARIANT = VARIANTS[0]
"""Models outside the context family run for the study's first variant only."""
RUN_DIR = posixpath.join("results/{study}", study.RUN_FOLDER)
RUN_NAME = study.RUN_NAME
"""A run's file name in a per-rule log and benchmark folders."""


def models_where(**where):
    """The study's models whose catalogue entry matches ``where`` (newllm.study.model_names)."""
    return study.model_names(MODELS, **where)


def model_constraint(**where):
    """A ``model`` wildcard constraint: the catalogue's models matching ``where`` (all
    registered ones, so a rule's pattern never depends on which models a study runs)."""
    names = study.model_names(**where)
    return "|".join(names) if names else "(?!)"


def log_path(*parts):
    """A rule's log: ``results/{study}/logs/<parts>.log``, the parts joined as folders, e.g.
    ``log_path("verdict")``, ``log_path("phase1", RUN_NAME)`` (wildcards stay wildcards).
    """
    return posixpath.join("results/{study}/logs", *parts) + ".log"


def benchmark_path(*parts):
    """A rule's benchmark: ``results/{study}/benchmarks/<parts>.tsv``, like :func:`log_path`."""
    return posixpath.join("results/{study}/benchmarks", *parts) + ".tsv"


def alternatives(values):
    """A wildcard constraint matching exactly the given values."""
    return "|".join(str(v) for v in values)


def study_runs():
    """Every run of the study as a dict {model, variant, samples, context_dim, seed, dir,
    final}, in catalogue order (newllm.study.study_runs); ``final`` is the folder holding
    the run's metrics.json and test_token_nll.npy."""
    runs = []
    for run_id in study.study_runs(MODELS, VARIANTS, SAMPLE_SIZES, CONTEXT_DIMS, SEEDS):
        run = run_id.as_dict()
        run["dir"] = RUN_DIR.format(study=STUDY, **run)
        run["final"] = study.get_model(run_id.model).final
        runs.append(run)
    return runs


RUNS = study_runs()


def lm_outputs(name):
    """``{dir}/{final}/{name}`` of every run, in RUNS order (metrics.json, test_token_nll.npy, history.csv)."""
    return [f"{run['dir']}/{run['final']}/{name}" for run in RUNS]


def cvfp_outputs(pattern, models=("cvfp",)):
    """``pattern`` expanded over the runs of the given models (default: cvfp only), in RUNS order."""
    return [
        pattern.format(
            **{
                k: run[k]
                for k in ("model", "variant", "samples", "context_dim", "seed")
            },
            study=STUDY,
        )
        for run in RUNS
        if run["model"] in models
    ]


def phase2_caches(wildcards):
    """The train/dev/test context caches of a run (none for a model without a cache), and
    the Phase 1 metrics of the ContextBlock that made them (its training FLOPs count).
    """
    entry = study.get_model(wildcards.model)
    if not entry.has_cache:
        return {}
    extra = {}
    if entry.context in ("phase1", "reset"):
        extra["phase1_metrics"] = context_weights(wildcards)["phase1_metrics"]
    names = {
        "train_cache": "train",
        "dev_cache": "dev",
        "test_cache": "test",
        "cache_meta": "meta",
    }
    return extra | {
        key: getattr(rules.export_contexts.output, name).format(
            **dict(wildcards.items())
        )
        for key, name in names.items()
    }


def context_weights(wildcards):
    """The weights and training metrics a run's context cache is made from: the Phase 1
    ContextBlock of the run itself or of the model it pairs with (reset_context reads
    cvfp's), same variant/size/dim/seed; the LSTM of rule state_producer for lstm_states.
    """
    entry = study.get_model(wildcards.model)
    if entry.context == "lm_states":
        return {
            "weights": rules.state_producer.output.weights.format(
                **dict(wildcards.items())
            ),
            "producer_metrics": rules.state_producer.output.metrics.format(
                **dict(wildcards.items())
            ),
        }
    source = {**dict(wildcards.items()), "model": entry.pairs_with or entry.name}
    return {
        "weights": rules.phase1.output.weights.format(**source),
        "phase1_metrics": rules.phase1.output.metrics.format(**source),
    }


TUNING = config["tuning"]["enabled"]
TUNED_MODELS = tuning.tuned_models(MODELS) if TUNING else []
"""The models whose tuning trials train (newllm.tuning.tuned_models); none without tuning."""
TRIALS = tuning.trials(config["tuning"])


TUNING_DIR = posixpath.join(
    "results/{study}/tuning", study.RUN_FOLDER.removeprefix("runs/"), "{trial}"
)
"""A tuning trial's folder: the run it trains at, then the trial (newllm.tuning.Trial.name)."""
TRIAL_NAME = f"{RUN_NAME}_{{trial}}"
"""A tuning trial's file name in the per-rule log and benchmark folders."""
TUNING_CHOICE = "results/{study}/tuning/{model}/choice.json"
"""A tuned model's chosen trial (rule tuning_choice), read by every run of its family."""


def trial_metrics(wildcards):
    """The metrics.json of every tuning trial of a tuned model, in grid order."""
    folder = study.get_model(wildcards.model).final
    return [
        f"{TUNING_DIR}/{folder}/metrics.json".format(
            study=wildcards.study, model=wildcards.model, trial=trial.name, **TUNING_RUN
        )
        for trial in TRIALS
    ]


def tuning_choice(wildcards):
    """``{"tuning_choice": choice.json}`` of the tuned model whose choice a run trains with
    (newllm.tuning.choice_model); nothing without tuning, for a model no choice covers, or
    for a tuning trial itself (its ``{trial}`` wildcard sets its settings)."""
    tuned = tuning.choice_model(wildcards.model, MODELS) if TUNING else None
    if tuned is None or "trial" in wildcards.keys():
        return {}
    return {"tuning_choice": TUNING_CHOICE.format(study=wildcards.study, model=tuned)}


def context_source(wildcards):
    """The catalogue's context source of the run's model (newllm.study.CONTEXT_SOURCES)."""
    return study.get_model(wildcards.model).context


def run_params(wildcards):
    """Resolved model/phase1/phase2 sections of one run, plus the run's identity."""
    resolved = RUN_CONFIG[wildcards.variant]
    return {
        **resolved,
        "model": {**resolved["model"], "context_dim": int(wildcards.context_dim)},
        "run": {
            "study": STUDY,
            "model": wildcards.model,
            "variant": wildcards.variant,
            "samples": int(wildcards.samples),
            "context_dim": int(wildcards.context_dim),
            "seed": int(wildcards.seed),
        },
        "seed": int(wildcards.seed),
        "device": config["device"],
        "precision": config["precision"],
    }


TRAINING_THREADS = 1
"""CPU threads of each training job (``phase1``, ``state_producer``, ``export_contexts``, ``phase1_diagnostics``, ``usable_memory``,
``phase2``, ``baseline_lm``, ``repetition_study``): one, so ``--cores N`` runs N of them side
by side, which uses the cores better than two threads per job (docs/performance.md).
Per rule: ``--set-threads phase2=4`` or a profile's ``set-threads``."""

GPUS = 0 if config["device"] == "cpu" else config["gpus_per_job"]
"""GPUs each training job asks for (resource ``gpu``): config ``gpus_per_job``, none when
the study computes on the CPU.  Locally ``--resources gpu=1`` then runs one training job
at a time on the GPU; on SLURM it becomes ``--gpus``.  profiles/slurm sets 0 (CPU
partition), profiles/slurm-gpu 1.  Memory and wall time per rule: profiles/default/."""


def final_outputs():
    """Everything the default target builds besides the analysis target (rule ``analysis``
    in rules/analysis.smk lists every table and figure of the study): the memory tables
    (perturbation probe and usable memory) and their figure.
    """
    return expand(
        [
            "results/{study}/figures/memory.png",
            "results/{study}/tables/memory_probe.csv",
            "results/{study}/tables/usable_memory_summary.csv",
        ],
        study=STUDY,
    )


# --------------------------------------------------------------- reruns, hub, caches
from newllm.hub import record_hub_access  # noqa: E402
from newllm.provenance import code_hash as script_code_hash  # noqa: E402

# every job runs offline; only the local retrieve rules may download (newllm.hub)
record_hub_access(os.environ)
CHECKPOINT_STORE = "results/{study}/checkpoints"
"""Resumable training checkpoints: the output of rule checkpoint_store (rules/provenance.smk)."""


def code_hash(script):
    """``params: code=code_hash("phase2")``: content hash of the ``newllm`` modules that
    workflow_scripts/<script>.py imports, so editing one reruns exactly the jobs using it.
    """
    return script_code_hash(Path(workflow.basedir, "workflow_scripts", f"{script}.py"))


CONTEXT_CACHE_SETTINGS = {
    k: v for k, v in config["context_cache"].items() if k != "temp"
}
"""``context_cache`` without the ``temp`` switch: the export settings (params of export_contexts)."""


def cache_output(path):
    """A context-cache output; ``temp()`` when config ``context_cache.temp`` is true, so
    Snakemake deletes it once Phase 2 and the diagnostics have read it.
    """
    return temp(path) if config["context_cache"]["temp"] else path


def hub_records():
    """The retrieve rules' records (the hub commits a study's data resolved to), as inputs
    of data_provenance; none for an offline study."""
    records = {}
    if HUB_CORPUS_INPUT:
        records["corpus"] = rules.retrieve_corpus.output.info
    if GPT2_CHECKPOINT_INPUT:
        records["gpt2"] = rules.retrieve_gpt2.output[0]
    return records
