"""The tidy runs table (docs/method.md §8): one row per run from its metrics files, and
the identity and sort order every analysis table shares.  No torch import.

- :func:`run_rows`: the runs table (the team contract's :data:`SUMMARY_COLUMNS`, the
  CVFP-family Phase 1, cache and diagnostics columns) and the diagnostics table.
- :func:`tag_history`: a run's history table with its identity in front.
- :func:`sort_models`: catalogue order of the models, then the other keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from newllm import study
from newllm.study import RUN_KEYS, model_rank

CONFIG_KEYS = ["model", "variant", "context_dim"]
POINT_KEYS = ["model", "variant", "context_dim", "samples"]
SUMMARY_COLUMNS = (
    "train_tokens",
    "dev_loss",
    "dev_ppl",
    "dev_accuracy",
    "test_loss",
    "test_ppl",
    "test_accuracy",
    "test_tokens",
    "parameters",
    "train_flops",
    "train_seconds",
    "steps",
    "best_step",
    "stopped_by",
    "undertrained",
)
"""Summary keys every run's final ``metrics.json`` carries (team contract)."""


def sort_models(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``frame`` sorted by model (study order), then by the other ``keys``."""
    rank = frame["model"].map(model_rank)
    return (
        frame.assign(_rank=rank)
        .sort_values(["_rank", *[k for k in keys if k != "model"]])
        .drop(columns="_rank")
        .reset_index(drop=True)
    )


# ----------------------------------------------------------------------------- runs table
def run_key(path: str | Path) -> dict[str, Any]:
    """The run identity ``{model, variant, samples, context_dim, seed}`` of a file inside a
    run directory (:meth:`newllm.study.RunId.parse`).

    Raises:
        ValueError: the path is not inside a run directory.
    """
    return study.RunId.parse(path).as_dict()


def _first(mapping: Mapping[str, Any] | None, *names: str, default: Any = None) -> Any:
    """The first of ``names`` present in ``mapping`` (files written before and after the
    validation → dev rename both read)."""
    for name in names:
        if mapping and name in mapping:
            return mapping[name]
    return default


def run_rows(
    metrics: Mapping[str, dict],
    phase1: Mapping[str, dict] | None = None,
    caches: Mapping[str, dict] | None = None,
    diagnostics: Mapping[str, dict] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy runs table and the Phase 1 diagnostics table.

    Args:
        metrics: final-stage ``metrics.json`` per path, one per run (every model).
        phase1, caches, diagnostics: ``phase1/metrics.json``, ``context_cache/cache.json``
            and ``diagnostics/phase1_diagnostics.json`` per path, for the runs that have
            them (the CVFP family); matched to runs by the run directory in the path.

    Returns:
        ``(runs, diagnostics)``.  ``runs``: one row per run sorted by model and keys, the
        identity (:data:`RUN_KEYS`), the contract's :data:`SUMMARY_COLUMNS`, and where
        available the CVFP settings, Phase 1 summary, Effective Rank of train and dev
        contexts (``train_er``, ``dev_er``, ``…_pct``, ``train_dev_er_gap_pct`` = train −
        dev, in points of % of context_dim), Phase 2 block parameters and the diagnostics
        verdicts.  ``diagnostics``: one row per run with a diagnostics file.

    Raises:
        ValueError: a metrics file lacks a contract summary key, names a different run than
            its path, or two files name the same run.
    """
    extras: dict[tuple, dict[str, Any]] = {}
    for source, files in (("phase1", phase1), ("cache", caches), ("diagnostics", diagnostics)):
        for path, data in (files or {}).items():
            extras.setdefault(tuple(run_key(path).values()), {})[source] = data
    rows, diag_rows, seen = [], [], set()
    for path, data in metrics.items():
        key = run_key(path)
        identity = tuple(key.values())
        if identity in seen:
            raise ValueError(f"two metrics files for run {key}")
        seen.add(identity)
        recorded = data.get("run", {})
        for k, v in key.items():
            if k in recorded and str(recorded[k]) != str(v):
                raise ValueError(f"{path}: metrics.json names {k}={recorded[k]!r} but lies in the directory of {k}={v!r}")
        summary = data.get("summary", {})
        missing = [c for c in SUMMARY_COLUMNS if c not in summary]
        if missing:
            raise ValueError(
                f"{path}: summary lacks {missing} (team contract: every run's metrics.json carries {list(SUMMARY_COLUMNS)})"
            )
        row = key | {c: summary[c] for c in SUMMARY_COLUMNS}
        row["undertrained"] = bool(row["undertrained"])
        for c in ("context_block_parameters", "token_block_parameters"):
            if c in summary:
                row[c] = summary[c]
        row.update(_cvfp_columns(extras.get(identity, {})))
        rows.append(row)
        diag = extras.get(identity, {}).get("diagnostics")
        if diag is not None:
            diag_rows.append(key | _diagnostic_columns(diag))
    runs = sort_models(pd.DataFrame(rows), RUN_KEYS) if rows else pd.DataFrame(columns=RUN_KEYS + list(SUMMARY_COLUMNS))
    diag_table = sort_models(pd.DataFrame(diag_rows), RUN_KEYS) if diag_rows else pd.DataFrame(columns=RUN_KEYS)
    return runs, diag_table


def _cvfp_columns(extra: dict[str, dict]) -> dict[str, Any]:
    """Phase 1, cache and diagnostics columns of one CVFP-family run (empty when absent)."""
    out: dict[str, Any] = {}
    p1, cache, diag = extra.get("phase1"), extra.get("cache"), extra.get("diagnostics")
    if p1 is not None:
        cfg, s1 = p1.get("config", {}), p1.get("summary", {})
        model_cfg, p1_cfg = cfg.get("model", {}), cfg.get("phase1", {})
        out.update({k: model_cfg.get(k) for k in ("num_input_tokens", "num_layers", "ffn_layers", "activation")})
        out.update(dist_reg_weight=p1_cfg.get("dist_reg_weight"), diversity=p1_cfg.get("diversity"))
        out.update(
            phase1_iterations=s1.get("iterations"),
            phase1_stopped_by=s1.get("stopped_by"),
            phase1_final_cvfp_loss=s1.get("final_cvfp_loss"),
            phase1_final_diversity_loss=s1.get("final_diversity_loss"),
            train_convergence_rate=s1.get("train_convergence_rate"),
            train_convergence=s1.get("train_convergence"),
            dev_convergence_rate=_first(s1, "dev_convergence_rate", "val_convergence_rate"),
            dev_convergence=_first(s1, "dev_convergence", "val_convergence"),
            phase1_seconds=s1.get("seconds"),
            phase1_tokens_per_s=s1.get("tokens_per_s"),
        )
    if cache is not None:
        train, dev = cache.get("train", {}), _first(cache, "dev", "validation", default={})
        out.update(
            cache_method=cache.get("method"),
            cache_converged=bool(train.get("converged", True) and dev.get("converged", True)),
            train_er=train.get("effective_rank"),
            train_er_pct=train.get("effective_rank_pct"),
            dev_er=dev.get("effective_rank"),
            dev_er_pct=dev.get("effective_rank_pct"),
        )
        if out["train_er_pct"] is not None and out["dev_er_pct"] is not None:
            out["train_dev_er_gap_pct"] = out["train_er_pct"] - out["dev_er_pct"]
    if diag is not None:
        out.update(
            identity_check="PASS" if diag["identity_check"]["passed"] else "FAIL",
            cvfp_verdict=diag["cvfp_convergence_check"]["verdict"],
            quality_band=diag["quality"]["band"],
        )
    return out


def _diagnostic_columns(diag: dict) -> dict[str, Any]:
    checks = {c["name"]: c["value"] for c in diag["identity_check"]["criteria"]}
    checks.update({f"{c['name']}_passed": c["passed"] for c in diag["identity_check"]["criteria"]})
    return {
        "train_er_pct": diag.get("train_effective_rank_pct"),
        "dev_er_pct": _first(diag, "dev_effective_rank_pct", "val_effective_rank_pct"),
        "train_convergence": diag.get("train_convergence"),
        "dev_convergence": _first(diag, "dev_convergence", "val_convergence"),
        "final_cvfp_loss": diag.get("final_cvfp_loss"),
        "iterations": diag.get("iterations"),
        "identity_check": "PASS" if diag["identity_check"]["passed"] else "FAIL",
        **checks,
        "cvfp_verdict": diag["cvfp_convergence_check"]["verdict"],
        "cvfp_slope": diag["cvfp_convergence_check"]["slope"],
        "cvfp_std": diag["cvfp_convergence_check"]["std"],
        "quality_band": diag["quality"]["band"],
        "overfitting_suspected": diag["quality"]["overfitting_suspected"],
    }


def tag_history(frame: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """A run's history table with its identity columns (:data:`RUN_KEYS`) in front."""
    frame = frame.copy()
    for k, v in reversed(list(run_key(path).items())):
        frame.insert(0, k, v)
    return frame
