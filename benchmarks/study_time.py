"""Where a finished study's time went, and what a larger study would take.

Reads the Snakemake ``benchmark:`` files of a finished study (``results/<study>/benchmarks``)
and prints, from that one run:

- per rule: jobs, job-seconds (wall time of each job's process, summed) and their share;
- job start-up: the time a fresh process needs to import what a training job imports,
  measured here (best of 3), times the number of jobs, as a share of all job-seconds;
- evaluation: the dev/test evaluation seconds the training runs report in their
  ``metrics.json`` (``eval_seconds``), as a share of those runs' job-seconds;
- idle cores: ``1 - job-seconds / (wall * cores)`` when ``--wall`` (the measured wall
  time of the run, seconds) is given.

With ``--project CONFIG`` it dry-runs that study config and projects its wall time on the
same machine: each planned job's seconds are interpolated (log-log, per rule and model) from
the measured jobs' seconds against their training size, assuming time does not depend on
context_dim (true for the head-dominated Phase 2 and baselines at d_e 64; Phase 1 grows with
it), and divided over ``--cores``.  Prints figures; asserts nothing.

    python benchmarks/study_time.py --study chitchat_cpu --wall 1500 --cores 2
    python benchmarks/study_time.py --study chitchat_cpu --project config/chitchat_full.yaml --cores 2
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RUN_NAME = re.compile(
    r"(?P<model>[a-z][a-z0-9_]*)_(?P<variant>[^_]+)_samples(?P<samples>\d+)_ctx(?P<context_dim>\d+)_seed(?P<seed>\d+)"
)
IMPORTS = "import torch, newllm.pipeline, newllm.phase1, newllm.phase2, newllm.trainer"


def job_table(study_dir: Path) -> pd.DataFrame:
    """One row per benchmarked job: rule, seconds, and the run identity when the file
    name is a run name (model, variant, samples, context_dim, seed)."""
    rows = []
    for path in sorted((study_dir / "benchmarks").rglob("*.tsv")):
        seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[-1])
        rule = path.relative_to(study_dir / "benchmarks").parts[0].removesuffix(".tsv")
        match = RUN_NAME.fullmatch(path.stem)
        rows.append({"rule": rule, "seconds": seconds, **(match.groupdict() if match else {})})
    table = pd.DataFrame(rows)
    if "samples" in table:
        table["samples"] = pd.to_numeric(table["samples"])
    return table


def startup_seconds(repeats: int = 3) -> float:
    """Best of ``repeats`` fresh-process imports of what a training job imports (seconds)."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, cwd=REPO)
        best = min(best, time.perf_counter() - start)
    return float(best)


def eval_seconds(study_dir: Path) -> tuple[float, int]:
    """Summed ``eval_seconds`` of every run's final metrics, and the number of runs reporting it."""
    total, runs = 0.0, 0
    for path in (study_dir / "runs").glob("*/*/*/*/metrics.json"):
        summary = json.loads(path.read_text()).get("summary", {})
        if summary.get("eval_seconds") is not None:
            total, runs = total + float(summary["eval_seconds"]), runs + 1
    return total, runs


def report(study_dir: Path, wall: float | None, cores: int) -> pd.DataFrame:
    """Print the per-rule table and the shares; return the job table."""
    jobs = job_table(study_dir)
    if jobs.empty:
        sys.exit(f"no benchmark files under {study_dir / 'benchmarks'}: run the study first")
    per_rule = jobs.groupby("rule")["seconds"].agg(jobs="count", job_seconds="sum").sort_values("job_seconds", ascending=False)
    total = per_rule["job_seconds"].sum()
    per_rule["share"] = per_rule["job_seconds"] / total
    print(f"study {study_dir.name}: {len(jobs)} benchmarked jobs, {total:.0f} job-seconds")
    print(per_rule.to_string(float_format=lambda v: f"{v:.3f}" if v < 1 else f"{v:.0f}"))
    start = startup_seconds()
    print(
        f"job start-up (fresh-process imports, best of 3): {start:.2f} s x {len(jobs)} jobs = "
        f"{start * len(jobs):.0f} s, {start * len(jobs) / total:.1%} of job-seconds"
    )
    evaluated, runs = eval_seconds(study_dir)
    trained = jobs[jobs["rule"].isin(["phase2", "baseline_lm"])]["seconds"].sum()
    if runs and trained:
        print(f"evaluation: {evaluated:.0f} s in {runs} runs, {evaluated / trained:.1%} of phase2 + baseline_lm job-seconds")
    if wall:
        print(f"wall {wall:.0f} s on {cores} cores: idle cores {1 - total / (wall * cores):.1%}")
    return jobs


def planned_jobs(config: str) -> pd.DataFrame:
    """The jobs a dry run of ``config`` plans: rule and, for per-run jobs, the run identity."""
    with tempfile.TemporaryDirectory() as work:
        out = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--configfile", config, "--directory", work],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    rows = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if not rule:
            continue
        wildcards = re.search(r"wildcards: (.*)", block)
        values = dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {}
        rows.append({"rule": rule.group(1), "model": values.get("model"), "samples": float(values.get("samples", "nan"))})
    return pd.DataFrame(rows)


def project(jobs: pd.DataFrame, config: str, cores: int) -> None:
    """Print the projected wall time of ``config`` from the measured ``jobs``."""
    plan = planned_jobs(config)
    plan = plan[plan["rule"] != "all"]
    seconds = np.empty(len(plan))
    for i, job in enumerate(plan.itertuples()):
        same = jobs[(jobs["rule"] == job.rule) & ((jobs.get("model") == job.model) if job.model else True)]
        if same.empty:
            same = jobs[jobs["rule"] == job.rule]
        if same.empty:
            seconds[i] = 0.0
        elif np.isnan(job.samples) or same["samples"].isna().all():
            seconds[i] = same["seconds"].mean()
        else:
            mean = same.groupby("samples")["seconds"].mean()
            x, y = np.log(mean.index.to_numpy(float)), np.log(mean.to_numpy(float))
            slope, icpt = np.polyfit(x, y, 1) if len(x) > 1 else (0.0, y[0])
            seconds[i] = float(np.exp(icpt + slope * np.log(job.samples)))
    plan = plan.assign(seconds=seconds)
    per_rule = plan.groupby("rule")["seconds"].agg(jobs="count", job_seconds="sum").sort_values("job_seconds", ascending=False)
    print(f"\nprojection of {config}: {len(plan)} jobs, {seconds.sum():.0f} job-seconds")
    print(per_rule.to_string(float_format=lambda v: f"{v:.0f}"))
    print(
        f"projected wall on {cores} cores with no idle time: {seconds.sum() / cores / 3600:.1f} h "
        "(log-log interpolation per rule and model over the measured sizes; extrapolated past the largest)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="chitchat_cpu", help="results/<study> to read")
    parser.add_argument("--wall", type=float, help="measured wall time of the run (seconds)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--project", help="a study config to project from the measured jobs")
    args = parser.parse_args()
    jobs = report(REPO / "results" / args.study, args.wall, args.cores)
    if args.project:
        project(jobs, args.project, args.cores)


if __name__ == "__main__":
    main()
