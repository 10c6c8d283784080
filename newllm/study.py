"""The study's models and runs: one catalogue entry per model, one identity per run.

No torch import: every Snakemake dry run reads this module.  Adding a model to the study
is one :func:`register_model` call here (plus a config section when it has settings, and
the module that implements it): the rules derive their model lists and wildcard
constraints from the catalogue, and the analysis, plots and verdict read it (the
registry pattern of torchdeq's ``register_solver``).

A run is identified by :class:`RunId` ``(model, variant, samples, context_dim, seed)``;
its folder is ``runs/{model}/{variant}/samples{N}_ctx{D}_seed{S}``, spelled once here as
:data:`RUN_FOLDER`.  See docs/method.md §10 for what each model controls for.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterable

FAMILIES = ("context", "lm", "count")
"""How a model predicts: ``context`` = a context producer read by the Phase 2 TokenBlock
(docs/method.md §7), ``lm`` = a standalone neural language model with its own readout,
``count`` = a count-based n-gram model."""

CONTEXT_SOURCES = ("phase1", "untrained", "reset", "zero", "lm_states")
"""Where a ``context`` model's contexts come from: ``phase1`` = the ContextBlock trained by
CVFP and iterated to its fixed point; ``untrained`` = the same block at initialisation;
``reset`` = the trained block applied to a zero previous context, ``c_i = F(0, x_i)``;
``zero`` = no context (a zero vector, no cache); ``lm_states`` = the hidden states of a
language model trained on the same tokens (docs/method.md §10)."""

ROLES = ("reference", "control", "baseline")
"""What a model is in the comparisons: the ``reference`` (cvfp), a ``control`` that
removes one ingredient of it, or an independent ``baseline``."""

OKABE_ITO = ("#0072B2", "#56B4E9", "#999999", "#000000", "#CC79A7", "#E69F00", "#D55E00", "#009E73", "#F0E442")
"""Okabe & Ito's colour-blind-safe palette (2008), plus grey."""


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model of the study.

    Attributes:
        name: the ``{model}`` wildcard and folder name.
        family: one of :data:`FAMILIES`.
        role: one of :data:`ROLES`.
        answers: the question this model answers, one sentence (README, report, verdict).
        label: a short name for tables and legends.
        color: the model's colour in every figure (a hex string).
        marker: the model's matplotlib marker in every figure.
        context: for the ``context`` family, one of :data:`CONTEXT_SOURCES`; else ``None``.
        per_context_dim: whether the model has a run per context_dim (``False``: one run
            with ``context_dim`` 0).
        all_variants: whether the model runs for every config variant (else the first only).
        pairs_with: the model whose runs supply this one's inputs (``reset`` contexts come
            from cvfp's Phase 1 weights), or ``None``.
    """

    name: str
    family: str
    role: str
    answers: str
    label: str
    color: str
    marker: str
    context: str | None = None
    per_context_dim: bool = True
    all_variants: bool = False
    pairs_with: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"model name {self.name!r}: allowed lower-case letters, digits and '_'")
        if self.family not in FAMILIES:
            raise ValueError(f"model {self.name!r}: family {self.family!r}; allowed: {', '.join(FAMILIES)}")
        if self.role not in ROLES:
            raise ValueError(f"model {self.name!r}: role {self.role!r}; allowed: {', '.join(ROLES)}")
        if (self.family == "context") != (self.context is not None):
            raise ValueError(f"model {self.name!r}: a context source is required for, and only for, family 'context'")
        if self.context is not None and self.context not in CONTEXT_SOURCES:
            raise ValueError(f"model {self.name!r}: context {self.context!r}; allowed: {', '.join(CONTEXT_SOURCES)}")

    @property
    def final(self) -> str:
        """The run sub-folder holding ``metrics.json`` and ``test_token_nll.npy``:
        ``phase2`` for the context family, ``lm`` otherwise."""
        return "phase2" if self.family == "context" else "lm"

    @property
    def has_context_block(self) -> bool:
        """Whether the run has its own ContextBlock (Phase 1 weights, diagnostics)."""
        return self.context in ("phase1", "untrained")

    @property
    def has_cache(self) -> bool:
        """Whether Phase 2 reads an exported context cache (every context source but zero)."""
        return self.family == "context" and self.context != "zero"


CATALOGUE: dict[str, ModelEntry] = {}
"""Every registered model by name, in registration order (the study's display order)."""


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` to :data:`CATALOGUE`.

    Raises:
        ValueError: a model of that name is already registered, or ``pairs_with`` names an
            unregistered model.
    """
    if entry.name in CATALOGUE:
        raise ValueError(f"model {entry.name!r} is already registered")
    if entry.pairs_with is not None and entry.pairs_with not in CATALOGUE:
        raise ValueError(f"model {entry.name!r} pairs with {entry.pairs_with!r}, which is not registered")
    CATALOGUE[entry.name] = entry
    return entry


def get_model(name: str) -> ModelEntry:
    """The catalogue entry of ``name``.

    Raises:
        KeyError: an unknown model, naming the registered ones.
    """
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(CATALOGUE)}") from None


def model_names(models: Iterable[str] | None = None, **where: Any) -> tuple[str, ...]:
    """Names of the catalogue's models (or of ``models``, in catalogue order) whose entry
    attributes equal every ``where`` value, e.g. ``model_names(study_models, family="lm")``;
    a tuple or set value matches any of its members."""
    chosen = set(CATALOGUE) if models is None else set(models)

    def matches(entry: ModelEntry) -> bool:
        for key, want in where.items():
            have = getattr(entry, key)
            if isinstance(want, (tuple, set, frozenset, list)):
                if have not in want:
                    return False
            elif have != want:
                return False
        return True

    return tuple(name for name, entry in CATALOGUE.items() if name in chosen and matches(entry))


def model_rank(model: str) -> int:
    """Position of ``model`` in the catalogue (unknown models last)."""
    order = list(CATALOGUE)
    return order.index(model) if model in order else len(order)


def model_style(model: str) -> dict[str, str]:
    """``{"color", "marker", "label"}`` of ``model`` for a figure; an unknown model gets
    grey circles and its own name."""
    entry = CATALOGUE.get(model)
    if entry is None:
        return {"color": "#999999", "marker": "o", "label": model}
    return {"color": entry.color, "marker": entry.marker, "label": entry.label}


# --------------------------------------------------------------------------------- runs
RUN_KEYS = ["model", "variant", "samples", "context_dim", "seed"]
"""The columns identifying a run, in order."""

RUN_FOLDER = "runs/{model}/{variant}/samples{samples}_ctx{context_dim}_seed{seed}"
"""A run's folder under ``results/{study}/`` (also a Snakemake wildcard pattern)."""

RUN_NAME = "{model}_{variant}_samples{samples}_ctx{context_dim}_seed{seed}"
"""A run's file name in per-rule log and benchmark folders."""

_RUN_PATTERN = re.compile(
    r"runs/(?P<model>[^/]+)/(?P<variant>[^/]+)/samples(?P<samples>\d+)_ctx(?P<context_dim>\d+)_seed(?P<seed>\d+)(?:/|$)"
)


@dataclasses.dataclass(frozen=True)
class RunId:
    """One run of the study: a model, a config variant, a training size (conversations),
    a context_dim (0 for models without one) and a training seed."""

    model: str
    variant: str
    samples: int
    context_dim: int
    seed: int

    @property
    def folder(self) -> str:
        """``runs/{model}/{variant}/samples{N}_ctx{D}_seed{S}`` (relative to the study)."""
        return RUN_FOLDER.format(**self.as_dict())

    @property
    def label(self) -> str:
        """``{model}/{variant}/samples{N}_ctx{D}_seed{S}``: the run's name in logs and figures."""
        return self.folder.removeprefix("runs/")

    @property
    def name(self) -> str:
        """:data:`RUN_NAME` filled in: a flat file name."""
        return RUN_NAME.format(**self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """The identity as ``{model, variant, samples, context_dim, seed}``."""
        return dataclasses.asdict(self)

    def with_model(self, model: str) -> "RunId":
        """The same run of another model (a paired run)."""
        return dataclasses.replace(self, model=model)

    @classmethod
    def from_mapping(cls, values: Any) -> "RunId":
        """A RunId from any mapping (or Snakemake wildcards) with the :data:`RUN_KEYS`;
        numbers given as strings are converted."""
        get = values.get if hasattr(values, "get") else lambda k: getattr(values, k)
        return cls(
            model=str(get("model")),
            variant=str(get("variant")),
            samples=int(get("samples")),
            context_dim=int(get("context_dim")),
            seed=int(get("seed")),
        )

    @classmethod
    def parse(cls, path: str | Path) -> "RunId":
        """The run whose folder contains ``path``.

        Raises:
            ValueError: the path is not inside a run folder.
        """
        match = _RUN_PATTERN.search(Path(path).as_posix())
        if not match:
            raise ValueError(f"{path} is not inside a run directory runs/{{model}}/{{variant}}/samples{{N}}_ctx{{D}}_seed{{S}}/")
        return cls.from_mapping(match.groupdict())


def study_runs(
    models: Iterable[str], variants: list[str], sample_sizes: Iterable[int], context_dims: Iterable[int], seeds: Iterable[int]
) -> list[RunId]:
    """Every run of a study, in a fixed order (catalogue order of the models, then variant,
    context_dim, size, seed).  Context-family models run every variant, the others the
    first; a model without ``per_context_dim`` runs once with context_dim 0.

    Raises:
        KeyError: an unregistered model.
    """
    runs = []
    for model in sorted(models, key=model_rank):
        entry = get_model(model)
        for variant in variants if entry.all_variants else variants[:1]:
            for context_dim in sorted(context_dims) if entry.per_context_dim else [0]:
                for samples in sorted(sample_sizes):
                    for seed in seeds:
                        runs.append(RunId(model, variant, int(samples), int(context_dim), int(seed)))
    return runs


# ---------------------------------------------------------------------------- catalogue
register_model(
    ModelEntry(
        name="cvfp",
        family="context",
        role="reference",
        context="phase1",
        all_variants=True,
        label="CVFP",
        color=OKABE_ITO[0],
        marker="o",
        answers="CVFP itself: a ContextBlock trained to a fixed point (Phase 1), read by a TokenBlock (Phase 2).",
    )
)
register_model(
    ModelEntry(
        name="reset_context",
        family="context",
        role="control",
        context="reset",
        all_variants=True,
        pairs_with="cvfp",
        label="reset context",
        color=OKABE_ITO[1],
        marker="v",
        answers="Does the context carry usable history? cvfp's trained ContextBlock with a zero previous "
        "context keeps its view of the current token and drops every earlier one.",
    )
)
register_model(
    ModelEntry(
        name="lstm_states",
        family="context",
        role="baseline",
        context="lm_states",
        label="LSTM states",
        color=OKABE_ITO[4],
        marker="p",
        answers="Is the fixed-point objective a good way to make a context? The hidden states of an LSTM "
        "language model (hidden size = context_dim, trained by back-propagation through time) read by "
        "the same TokenBlock.",
    )
)
register_model(
    ModelEntry(
        name="untrained_context",
        family="context",
        role="control",
        context="untrained",
        label="untrained context",
        color=OKABE_ITO[2],
        marker="s",
        answers="Does Phase 1 help? The same recurrence at its random initialisation (a reservoir).",
    )
)
register_model(
    ModelEntry(
        name="no_context",
        family="context",
        role="control",
        context="zero",
        all_variants=True,
        label="no context",
        color=OKABE_ITO[3],
        marker="X",
        answers="How much does any context add? The same TokenBlock with the context fixed to zero.",
    )
)
register_model(
    ModelEntry(
        name="ngram",
        family="count",
        role="baseline",
        per_context_dim=False,
        label="Kneser-Ney",
        color=OKABE_ITO[5],
        marker="^",
        answers="Does a neural model beat counting? Interpolated Kneser-Ney on the training tokens.",
    )
)
register_model(
    ModelEntry(
        name="ngram_slice",
        family="count",
        role="baseline",
        per_context_dim=False,
        label="Kneser-Ney + slice",
        color=OKABE_ITO[8],
        marker="<",
        answers="Does a neural model beat counting at equal data? Kneser-Ney on the embedding slice "
        "(the frozen head's data) plus the training tokens.",
    )
)
register_model(
    ModelEntry(
        name="lstm",
        family="lm",
        role="baseline",
        label="LSTM",
        color=OKABE_ITO[6],
        marker="D",
        answers="Does CVFP match back-propagation through time? A parameter-matched LSTM language model.",
    )
)
register_model(
    ModelEntry(
        name="mingru",
        family="lm",
        role="baseline",
        label="minGRU",
        color="#882255",
        marker="h",
        answers="Does CVFP match a recurrence trained in parallel with exact gradients? A parameter-matched "
        "minGRU language model (log-space parallel scan).",
    )
)
register_model(
    ModelEntry(
        name="transformer",
        family="lm",
        role="baseline",
        label="Transformer",
        color=OKABE_ITO[7],
        marker="P",
        answers="Does CVFP match attention? A parameter-matched causal Transformer language model.",
    )
)
