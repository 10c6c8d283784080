"""The equal tuning budget: one dev grid for every trained family, chosen by a rule (docs/method.md §10.5).

Every trained family — Phase 2 (the TokenBlock every context model is read by) and each
standalone neural language model — trains the same grid of :class:`Trial` s (learning-rate
factors x dropouts, config ``tuning``) at one run (one sample size, the first seed).
:func:`choose` keeps the trial with the lowest dev loss; every run of the family then
trains with it (:func:`apply_trial`).  The test split is never scored in a trial, so it
cannot enter the choice.

Phase 2's trials train the study's reference model (cvfp) and the choice is shared by every
model the TokenBlock reads (the controls), so the controls differ from cvfp only in their
contexts.  No torch import: the rules read this module at DAG time.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from typing import Any, Iterable, Mapping

from newllm.study import get_model, model_names

TRIAL_PATTERN = r"lr[0-9.e+-]+_dropout[0-9.e+-]+"
"""The ``{trial}`` wildcard: :attr:`Trial.name`."""

CHOICE_KEYS = ("dev_loss", "dev_ppl", "best_step", "steps", "stopped_by", "undertrained", "train_seconds")
"""The trial summary keys the choice and the tuning table keep (newllm.trainer's summary)."""


@dataclasses.dataclass(frozen=True)
class Trial:
    """One grid point: the family's configured ``learning_rate`` times ``learning_rate_factor``,
    and ``dropout``."""

    learning_rate_factor: float
    dropout: float

    @property
    def name(self) -> str:
        """The trial's folder and ``{trial}`` wildcard, e.g. ``lr0.5_dropout0.1``."""
        return f"lr{self.learning_rate_factor:g}_dropout{self.dropout:g}"

    @classmethod
    def parse(cls, name: str) -> "Trial":
        """Inverse of :attr:`name`.

        Raises:
            ValueError: ``name`` does not match :data:`TRIAL_PATTERN`.
        """
        if re.fullmatch(TRIAL_PATTERN, name) is None:
            raise ValueError(f"tuning trial {name!r}: expected lr<factor>_dropout<rate>, e.g. 'lr0.5_dropout0.1'")
        factor, dropout = name.removeprefix("lr").split("_dropout")
        return cls(float(factor), float(dropout))


def trials(tuning: Mapping[str, Any]) -> list[Trial]:
    """The grid of a resolved ``tuning`` config section, learning-rate factors outermost
    (the order ties are broken in)."""
    return [Trial(float(f), float(p)) for f, p in itertools.product(tuning["learning_rate_factors"], tuning["dropouts"])]


def tuned_models(models: Iterable[str]) -> list[str]:
    """The models whose trials are trained: the study's Phase 2 reference (its ``reference``
    context model, else its first context model) and every standalone neural LM, in the
    study's order."""
    models = list(models)
    context = model_names(models, family="context")
    reference = [m for m in context if get_model(m).role == "reference"] or context[:1]
    return [m for m in models if m in reference or get_model(m).family == "lm"]


def choice_model(model: str, models: Iterable[str]) -> str | None:
    """The tuned model whose choice ``model``'s runs train with: the Phase 2 reference for
    every context model, the model itself for a neural LM, ``None`` for a count model (or
    a model outside :func:`tuned_models`)."""
    tuned = tuned_models(models)
    family = get_model(model).family
    if family == "context":
        return next((m for m in tuned if get_model(m).family == "context"), None)
    return model if model in tuned else None


def tuning_run(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run every trial trains at: ``tuning.samples`` (null: the middle sample size), the
    first variant and seed, the middle context_dim (the lower middle for an even count).

    Raises:
        ValueError: ``tuning.samples`` is not one of ``sample_sizes``.
    """
    sizes, dims = sorted(config["sample_sizes"]), sorted(config["context_dims"])
    samples = config["tuning"]["samples"]
    if samples is None:
        samples = sizes[(len(sizes) - 1) // 2]
    elif samples not in sizes:
        raise ValueError(f"tuning.samples={samples} is not a sample size; allowed: {', '.join(map(str, sizes))}")
    return {
        "variant": next(iter(config["variants"])),
        "samples": samples,
        "context_dim": dims[(len(dims) - 1) // 2],
        "seed": config["seeds"][0],
    }


def apply_trial(section: Mapping[str, Any], trial: Trial | None) -> dict[str, Any]:
    """A training section (``phase2`` or ``baselines.<model>``) with ``trial`` applied:
    ``learning_rate`` times the trial's factor and the trial's ``dropout``; unchanged for
    ``None``."""
    if trial is None:
        return dict(section)
    return {**section, "learning_rate": section["learning_rate"] * trial.learning_rate_factor, "dropout": trial.dropout}


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The chosen trial: the lowest ``dev_loss`` (nats per token at the trial's best step),
    ties broken by grid order (the order of ``rows``).

    Args:
        rows: one dict per trial with ``trial`` and ``dev_loss`` (and any other columns).

    Returns:
        the chosen row.

    Raises:
        ValueError: no rows, or a row's dev loss is not finite (a diverged trial is named).
    """
    if not rows:
        raise ValueError("no tuning trials to choose from")
    bad = [row["trial"] for row in rows if not math.isfinite(row["dev_loss"])]
    if bad:
        raise ValueError(f"tuning trials {bad} have a non-finite dev loss; allowed: finite (lower the learning-rate factors)")
    return min(rows, key=lambda row: row["dev_loss"])


def trial_row(model: str, trial: Trial, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One tuning-table row from a trial's ``metrics.json``: the model, the trial, the
    learning rate and dropout it trained with, and :data:`CHOICE_KEYS` of its summary."""
    settings = metrics["baseline"]["settings"] if "baseline" in metrics else metrics["config"]["phase2"]
    summary = metrics["summary"]
    return {
        "model": model,
        "trial": trial.name,
        "learning_rate_factor": trial.learning_rate_factor,
        "dropout": trial.dropout,
        "learning_rate": settings["learning_rate"],
        **{key: summary.get(key) for key in CHOICE_KEYS},
    }


def job_trial(smk: Any) -> Trial | None:
    """The trial a training job trains with: ``params.trial`` (a tuning trial, rules
    tune_phase2 / tune_baseline_lm), else the chosen trial in ``input.tuning_choice`` (a
    study run when tuning is enabled), else ``None`` (the configured settings)."""
    trial = getattr(smk.params, "trial", None)
    if trial:
        return Trial.parse(trial)
    path = getattr(smk.input, "tuning_choice", None)
    if path:
        with open(path, encoding="utf-8") as handle:
            return Trial.parse(json.load(handle)["chosen"]["trial"])
    return None


def tuning_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The verdict's tuning section from the tuning table's rows (rule tuning_table): per
    tuned model the chosen learning rate and dropout with the trial's dev perplexity, the
    number of trials, and a warning where the choice sits at the edge of the learning-rate
    grid (a wider grid might have done better) or a trial was undertrained."""
    if not rows:
        return []
    models = list(dict.fromkeys(row["model"] for row in rows))
    first = rows[0]
    lines = [
        "## Tuning",
        "",
        f"Every trained family trained the same {len([r for r in rows if r['model'] == models[0]])} trials "
        f"(learning-rate factor x dropout) at {first['tuning_samples']} conversations, seed {first['tuning_seed']}; "
        "the lowest dev loss was kept (test never scored):",
        "",
    ]
    for model in models:
        trials = [row for row in rows if row["model"] == model]
        chosen = next(row for row in trials if row["chosen"])
        factors = sorted({row["learning_rate_factor"] for row in trials})
        who = f"Phase 2, tuned on {model} (every context model)" if get_model(model).family == "context" else model
        line = (
            f"- {who}: learning rate {chosen['learning_rate']:g} (factor {chosen['learning_rate_factor']:g}), "
            f"dropout {chosen['dropout']:g}; dev PPL {chosen['dev_ppl']:.2f} of {len(trials)} trials"
        )
        if len(factors) > 1 and chosen["learning_rate_factor"] in (factors[0], factors[-1]):
            line += "; **at the edge of the learning-rate grid**"
        undertrained = sum(bool(row["undertrained"]) for row in trials)
        if undertrained:
            line += f"; {undertrained} trial(s) undertrained"
        lines.append(line + ".")
    return [*lines, ""]
