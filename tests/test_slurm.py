"""The cluster path on a real SLURM: the tiny study submitted through profiles/slurm.

Needs a running cluster, e.g. the one-node cluster of tests/slurm/local_cluster.sh
(`.ci/run` starts it when it runs as root); skipped, with the reason, where `sbatch` is
missing or the cluster does not answer.  One submission checks three things: every job
ran as a SLURM job, a training job killed with `scancel` is retried (with doubled memory
and wall time) and the run still completes, and the tables equal those of the local run
of the same config (the session's `e2e` run, timing columns aside).
"""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
STUDY = "results/test"
# a reduced target of the tiny study, to keep the test short: every data job (the data
# coverage table needs all training sets) and one Phase 1 run
TARGETS = [f"{STUDY}/tables/data_coverage.csv", f"{STUDY}/runs/cvfp/base/samples6_ctx16_seed0/phase1/metrics.json"]
KILL_RULES = ("phase1",)  # the first job of these rules seen running is cancelled
NODE_MEMORY_MB = 16000  # Phase 1 asks for 8000 MB, its retry for twice that (profiles/default)
TIMING = re.compile(r"seconds|per_s$|elapsed|duration|resumed_from")
"""Columns and summary keys that differ between two runs of the same config (wall-clock
time, throughput) or that say a job resumed from a checkpoint after the kill."""


def _cluster_problem():
    """Why no SLURM job can run here, or None."""
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH (start a local cluster: sudo tests/slurm/local_cluster.sh start)"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        states = subprocess.run(["sinfo", "--noheader", "--format", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"SLURM does not answer: {err}"
    if "UP" not in ping.stdout:
        first_line = ((ping.stdout + ping.stderr).strip() or "no output").splitlines()[0]
        return f"the SLURM controller does not answer ({first_line})"
    if not set(states.stdout.split()) & {"idle", "mixed", "allocated", "completing"}:
        return f"no SLURM node takes jobs (sinfo: {states.stdout.split() or states.stderr.strip()})"
    memory = subprocess.run(["sinfo", "--noheader", "--format", "%m"], capture_output=True, text=True, timeout=20).stdout.split()
    if max((int(m.rstrip("+")) for m in memory if m.rstrip("+").isdigit()), default=0) < NODE_MEMORY_MB:
        return f"no SLURM node has the {NODE_MEMORY_MB} MB a retried Phase 1 job asks for (sinfo %m: {memory})"
    return None


_PROBLEM = _cluster_problem()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_PROBLEM is not None, reason=f"no SLURM cluster: {_PROBLEM}")]


def _squeue(run_uuid):
    """[(job id, comment, state, elapsed)] of this run's jobs (finished ones for MinJobAge)."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--name", run_uuid, "--format", "%i|%k|%T|%M"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.count("|") == 3]


def _seconds(elapsed):
    """squeue's %M ([days-][hours:]minutes:seconds) in seconds."""
    days, _, clock = elapsed.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds + 86400 * int(days or 0)


def _submissions(log):
    """[(local, rule, Snakemake jobid, resources line, SLURM job id or None)] per job (attempt) in the log.

    A job's block ("rule NAME:" and indented lines) and its line "Job N has been submitted
    with SLURM jobid M" can be apart when several jobs start at once: the k-th block of
    Snakemake job N goes with the k-th submission of N.
    """
    submitted = {}
    for jobid, slurm_id in re.findall(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", log, re.M):
        submitted.setdefault(int(jobid), []).append(slurm_id)
    jobs = []
    for local, rule, body in re.findall(r"^(local)?rule (\w+):\n((?:    .*\n)+)", log, re.M):
        jobid = int(re.search(r"^    jobid: (\d+)", body, re.M).group(1))
        resources = re.search(r"^    resources: (.*)$", body, re.M)
        slurm_id = None if local else (submitted.get(jobid) or [None]).pop(0)
        jobs.append((bool(local), rule, jobid, resources.group(1) if resources else "", slurm_id))
    return jobs


def _resource(line, name):
    match = re.search(rf"(?:^|, ){name}=(\d+)", line)
    return int(match.group(1)) if match else None


def _table(path):
    frame = pd.read_csv(path)
    return frame.drop(columns=[c for c in frame.columns if TIMING.search(c)])


def _summary(path):
    return {k: v for k, v in json.loads(Path(path).read_text())["summary"].items() if not TIMING.search(k)}


@pytest.mark.slow
def test_tiny_study_on_slurm(repo, e2e, tmp_path):
    """Submit through profiles/slurm, scancel a running training job, compare with the local run."""
    _, local = e2e
    log_path = tmp_path / "snakemake.log"
    start = time.monotonic()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            SNAKEMAKE
            + [
                "--profile",
                "profiles/slurm",
                "--configfile",
                "config/test.yaml",
                "--directory",
                str(tmp_path / "w"),
                "--slurm-init-seconds-before-status-checks",
                "1",
                *TARGETS,
            ],
            cwd=repo,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    run_uuid, killed = None, None
    try:
        while proc.poll() is None and time.monotonic() - start < 900:
            time.sleep(0.5)
            if run_uuid is None:
                match = re.search(r"SLURM run ID: (\S+)", log_path.read_text())
                run_uuid = match and match.group(1)
            elif killed is None:
                for job_id, comment, state, elapsed in _squeue(run_uuid):
                    if (
                        comment.startswith(tuple(f"rule_{r}_" for r in KILL_RULES))
                        and state == "RUNNING"
                        and _seconds(elapsed) >= 2
                    ):
                        subprocess.run(["scancel", job_id], check=True, timeout=30)
                        killed = (job_id, comment)
                        break
        assert proc.poll() is not None, "the SLURM run did not finish within 900 s"
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
        if run_uuid:  # nothing of this run left on the cluster
            subprocess.run(["scancel", "--name", run_uuid], capture_output=True, timeout=30)
    wall = time.monotonic() - start
    log = log_path.read_text()
    assert proc.returncode == 0, f"snakemake on SLURM failed:\n{log[-6000:]}"
    assert killed, f"no training job was seen running long enough to cancel:\n{log[-3000:]}"

    # every job that is not a localrule was submitted to SLURM, and SLURM ran it
    jobs = _submissions(log)
    remote = [job for job in jobs if not job[0]]
    assert remote and all(job[4] for job in remote), [job for job in remote if not job[4]]
    assert {job[1] for job in jobs if job[0]} >= {"tokenizer", "data_coverage"}  # localrules stay local
    states = {job_id: state for job_id, _, state, _ in _squeue(run_uuid)}
    slurm_ids = [job[4] for job in remote]
    assert killed[0] in slurm_ids and states[killed[0]] == "CANCELLED", states
    assert all(states.get(i) == "COMPLETED" for i in slurm_ids if i != killed[0]), states
    # the cancelled job was resubmitted (attempt 2): same Snakemake job, new SLURM job, doubled limits
    first = next(job for job in remote if job[4] == killed[0])
    retries = [job for job in remote if job[2] == first[2] and job[4] != killed[0]]
    assert len(retries) == 1, retries
    for name in ("mem_mb", "runtime"):
        assert _resource(retries[0][3], name) == 2 * _resource(first[3], name), (first[3], retries[0][3])
    print(
        f"\nSLURM run {run_uuid}: {wall:.0f} s, {len(slurm_ids)} SLURM jobs {', '.join(slurm_ids)}; "
        f"cancelled {killed[0]} ({killed[1]}), retried as {retries[0][4]}"
    )

    # the tables equal the local run's (same config, same machine), timing columns aside
    slurm_results = tmp_path / "w" / STUDY
    tables = sorted(p.relative_to(slurm_results) for p in slurm_results.rglob("*.csv"))
    assert set(map(str, tables)) >= {"tables/data_coverage.csv", "runs/cvfp/base/samples6_ctx16_seed0/phase1/history.csv"}, tables
    for table in tables:
        pd.testing.assert_frame_equal(_table(slurm_results / table), _table(local / table), obj=str(table))
    for metrics in sorted(slurm_results.rglob("metrics.json")):
        assert _summary(metrics) == _summary(local / metrics.relative_to(slurm_results)), metrics
