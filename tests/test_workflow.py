"""The workflow itself: dry run, lint, and a tiny end-to-end run of the real DAG."""

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _run(args, cwd, timeout=900):
    result = subprocess.run(SNAKEMAKE + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def test_dry_run_of_the_default_config(repo, tmp_path):
    out = _run(["-n", "--directory", str(tmp_path)], cwd=repo)
    for rule, count in [("phase1", 8), ("export_contexts", 8), ("phase1_diagnostics", 8), ("phase2", 8), ("make_train_set", 4), ("fit_scaling", 1)]:
        assert any(line.split()[:2] == [rule, str(count)] for line in out.splitlines()), out


def test_dry_run_of_the_ultrachat_study(repo, tmp_path):
    # 5 sizes x 3 context_dims (768/1200/1537) x 2 variants (1 vs 2 input tokens)
    out = _run(["-n", "--configfile", "config/ultrachat_gpt2.yaml", "--directory", str(tmp_path)], cwd=repo)
    assert any(line.split()[:2] == ["phase2", "30"] for line in out.splitlines()), out


def test_dry_run_of_the_cpu_variant_study(repo, tmp_path):
    out = _run(["-n", "--configfile", "config/cpu_variants.yaml", "--directory", str(tmp_path)], cwd=repo)
    assert any(line.split()[:2] == ["phase2", "36"] for line in out.splitlines()), out


def _job_resources(out):
    """{rule: [resources line, ...]} from a dry run's job listing."""
    jobs, rule = {}, None
    for line in out.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):", line)
        if match:
            rule = match.group(1)
        elif rule and line.strip().startswith("resources:"):
            jobs.setdefault(rule, []).append(line)
    return jobs


TRAINING_RULES = ("phase1", "export_contexts", "phase1_diagnostics", "phase2", "repetition_study", "baseline_lm")


@pytest.mark.parametrize("profile, gpus, partition", [("profiles/slurm", 0, "cpu"), ("profiles/slurm-gpu", 1, "gpu")])
def test_slurm_profiles_dry_run(repo, tmp_path, profile, gpus, partition):
    """CPU and GPU partitions without --set-resources: the cluster profile says whether
    training jobs ask for a GPU; memory and wall time per rule come from the workflow
    profile (profiles/default), which Snakemake loads under --profile too."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    out = _run(["-n", "--profile", profile, "--configfile", "config/ultrachat_gpt2.yaml", "--directory", str(tmp_path)],
               cwd=repo)
    jobs = _job_resources(out)
    source = "".join(f.read_text() for f in [repo / "Snakefile", *sorted((repo / "rules").glob("*.smk"))])
    bodies = dict(re.findall(r"^rule (\w+):(.*?)(?=^\S|\Z)", source, re.M | re.S))
    # localrules, and rules that only collect targets (no script), run where Snakemake runs
    local = {name for name, body in bodies.items() if "localrule: True" in body or not re.search(r"^    (script|shell|run):", body, re.M)}
    for rule in TRAINING_RULES:
        assert jobs[rule] and all(f"gpu={gpus}," in line + "," for line in jobs[rule]), (rule, jobs[rule][:1])
    for rule, lines in jobs.items():
        if rule in local:
            continue
        for line in lines:
            assert re.search(r"mem_mb=\d+", line) and re.search(r"runtime=\d+", line), (rule, line)
            assert f"slurm_partition={partition}" in line, (rule, line)
            assert rule in TRAINING_RULES or not re.search(r"\bgpu=", line), (rule, line)
    assert all("mem_mb=8000," in line and "runtime=240" in line for line in jobs["phase2"])
    # light rules (fits, tables, plots) run on the submit host, never as cluster jobs
    for rule in ("collect_runs", "fit_scaling", "sliding_alpha", "comparisons", "prediction", "plot_scaling", "plot_analysis",
                 "plot_repetition", "tokenizer"):
        assert rule in local, rule


def test_memory_and_wall_time_grow_with_each_retry(repo):
    """Every per-rule mem_mb and runtime in the workflow profile doubles with each attempt,
    evaluated as Snakemake evaluates them: a job killed for memory or time is not
    resubmitted with the same limits (tests/test_slurm.py sees it on a real cluster)."""
    import yaml
    from snakemake.cli import parse_set_resources

    profile = yaml.safe_load((repo / "profiles" / "default" / "config.yaml").read_text())
    parsed = parse_set_resources([f"{rule}:{name}={value}" for rule, resources in profile["set-resources"].items()
                                  for name, value in resources.items()])
    assert {"phase1", "phase2", "cache_corpus"} <= set(parsed)
    for rule, resources in parsed.items():
        for name in ("mem_mb", "runtime"):
            values = [resources[name].evaluate(wildcards={}, input=[], attempt=attempt, threads=2, rulename=rule,
                                               async_run=None).value for attempt in (1, 2, 3)]
            assert values == [values[0], 2 * values[0], 4 * values[0]] and values[0] > 0, (rule, name, values)


@pytest.mark.slow
def test_dry_run_of_a_large_sweep(repo):
    result = subprocess.run([sys.executable, "benchmarks/dag_scale.py"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = int(re.search(r"\((\d+) jobs\)", result.stdout).group(1))
    assert jobs >= 5000
    print(result.stdout)


def test_lint(repo):
    _run(["--lint"], cwd=repo)


def test_snakefmt(repo):
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# e2e (the tiny study run once per session) is a fixture in conftest.py


@pytest.mark.slow
def test_end_to_end_produces_tables_and_figures(e2e):
    _, results = e2e
    runs = pd.read_csv(results / "tables" / "runs.csv")
    assert len(runs) == 6 and set(runs["variant"]) == {"base", "tok2"} and set(runs["samples"]) == {6, 12, 24}
    assert set(runs.loc[runs["variant"] == "tok2", "num_input_tokens"]) == {2}
    assert runs["val_ppl"].between(1, 50257 * 10).all() and runs["val_ppl"].notna().all()
    assert (runs.groupby("variant")["train_tokens"].apply(lambda s: s.is_monotonic_increasing)).all()
    assert runs["val_convergence"].str.match(r"\d+\.\d % \(\d+/\d+\)").all()
    fits = pd.read_csv(results / "tables" / "scaling_fits.csv")
    assert len(fits) == 2 and fits["alpha"].notna().all() and fits["r2"].between(0, 1).all()
    diagnostics = pd.read_csv(results / "tables" / "diagnostics.csv")
    assert len(diagnostics) == 6 and set(diagnostics["identity_check"]) <= {"PASS", "FAIL"}
    assert set(diagnostics["cvfp_verdict"]) <= {"CONVERGING", "CONVERGED", "DIVERGING", "UNSTABLE"}
    assert diagnostics["mean_cosine_to_token_embedding"].notna().all()  # context_dim == embed_dim here
    windows = pd.read_csv(results / "tables" / "sliding_alpha.csv")
    assert len(windows) == 2 * 2  # (3 sizes - window 2 + 1) windows x 2 variants
    comparison = pd.read_csv(results / "tables" / "comparison.csv")
    assert list(comparison["variant"]) == ["base", "tok2"]
    assert (comparison.set_index("variant").loc["tok2", "parameters"] > comparison.set_index("variant").loc["base", "parameters"])
    correlations = pd.read_csv(results / "tables" / "prediction_correlations.csv")
    assert set(correlations["predictor"]) == {"val_er_pct", "train_er_pct", "train_val_er_gap_pct", "phase1_iterations"}
    coverage = pd.read_csv(results / "tables" / "data_coverage.csv")
    assert list(coverage["samples"]) == [6, 12, 24]
    assert coverage["unseen_tokens"].is_monotonic_decreasing
    for fig in ("scaling", "phase1_curves", "phase2_curves", "sliding_alpha", "er_vs_ppl", "effective_rank", "parameter_efficiency",
                "repetition_stages", "repetition_topk", "repetition_fixed_points"):
        png = results / "figures" / f"{fig}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    metrics = json.loads((results / "runs/base/samples6_ctx16/phase1/metrics.json").read_text())
    assert metrics["provenance"]["device"] == "cpu" and metrics["config"]["phase1"]["dist_reg_weight"] == 0.9
    assert len(metrics["history"]) == metrics["summary"]["iterations"]


@pytest.mark.slow
def test_repetition_study_outputs(e2e):
    _, results = e2e
    summary = json.loads((results / "repetition" / "summary.json").read_text())
    for protocol in ("round_robin", "sequential"):
        s = summary[protocol]
        assert s["tokens"] == 8 and 0 <= s["converged"] <= 8 and s["verdict"]
        assert s["fixed_point_distances"]["min"] <= s["fixed_point_distances"]["median"] <= s["fixed_point_distances"]["max"]
    tokens = pd.read_csv(results / "repetition" / "topk_tokens.csv")
    assert len(tokens) == 16 and set(tokens["protocol"]) == {"round_robin", "sequential"}
    stages = pd.read_csv(results / "repetition" / "stages.csv")
    assert list(zip(stages["stage"], stages["epoch"])) == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    distances = pd.read_csv(results / "repetition" / "fixed_point_distances.csv")
    assert len(distances) == 2 * 8 * 7 // 2


@pytest.mark.slow
def test_validation_is_disjoint_from_every_training_set(e2e):
    _, results = e2e
    validation = set(json.loads((results / "data" / "validation.json").read_text())["sample_ids"])
    for size in (6, 12, 24):
        train = json.loads((results / "data" / "train" / f"samples{size}.json").read_text())
        assert len(train["sample_ids"]) == size and validation.isdisjoint(train["sample_ids"])


@pytest.mark.slow
def test_figures_regenerate_from_tables_without_retraining(repo, e2e):
    workdir, results = e2e
    before = (results / "runs/base/samples24_ctx16/phase2/token_block.safetensors").stat().st_mtime_ns
    out = _run(["--cores", "1", "--configfile", "config/test.yaml", "--directory", str(workdir),
                "--forcerun", "plot_scaling", "plot_phase1", "plot_phase2", "plot_analysis"], cwd=repo)
    assert "phase2" not in [line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0] in ("phase1", "phase2")]
    assert (results / "runs/base/samples24_ctx16/phase2/token_block.safetensors").stat().st_mtime_ns == before
    assert "plot_scaling" in out


@pytest.mark.slow
def test_report_builds(repo, e2e):
    workdir, _ = e2e
    _run(["--configfile", "config/test.yaml", "--directory", str(workdir), "--report", str(workdir / "report.html")], cwd=repo)
    html = (workdir / "report.html").read_text(errors="ignore")
    assert len(html) > 50_000
    for name in ("scaling.png", "sliding_alpha.png", "er_vs_ppl.png", "diagnostics.csv", "comparison.csv"):
        assert name in html
    for category in ("Overview", "Data", "Phase 1", "Phase 2", "Scaling", "Prediction", "Diagnostics", "Repetition"):
        assert f'"{category}"' in html


@pytest.mark.slow
def test_killed_and_resumed_run_matches_the_uninterrupted_one(repo, e2e, tmp_path):
    """SIGKILL Phase 1 and then Phase 2 mid-run, rerun the workflow each time: the final
    metrics equal those of the uninterrupted e2e run (same config, same machine)."""
    _, results = e2e
    target = "results/test/runs/base/samples12_ctx16/phase2/metrics.json"
    args = ["--cores", "2", "--configfile", "config/test.yaml", "--directory", str(tmp_path), target]
    run_dir = tmp_path / "results/test/runs/base/samples12_ctx16"
    for kill_at, checkpoint in (("phase1:5", run_dir / "phase1/checkpoint.safetensors"), ("phase2:1", run_dir / "phase2/checkpoint.safetensors")):
        killed = subprocess.run(SNAKEMAKE + args, cwd=repo, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "NEWLLM_KILL_AT": kill_at})
        assert killed.returncode != 0 and checkpoint.is_file(), killed.stdout[-2000:]
    out = _run(args, cwd=repo)
    assert not (run_dir / "phase2/checkpoint.safetensors").exists()  # removed after success
    resumed_log = (tmp_path / "results/test/logs/phase2/base_samples12_ctx16.log").read_text()
    assert "checkpoint found" in resumed_log, out
    a = json.loads((results / "runs/base/samples12_ctx16/phase2/metrics.json").read_text())
    b = json.loads((tmp_path / "results/test/runs/base/samples12_ctx16/phase2/metrics.json").read_text())
    assert b["summary"]["resumed_from_epoch"] == 2
    for key in ("val_ppl", "val_accuracy", "train_ppl", "best_epoch"):
        assert a["summary"][key] == b["summary"][key]
    assert [r["val_loss"] for r in a["history"]] == [r["val_loss"] for r in b["history"]]
    p1a = json.loads((results / "runs/base/samples12_ctx16/phase1/metrics.json").read_text())
    p1b = json.loads((run_dir / "phase1/metrics.json").read_text())
    assert p1b["summary"]["resumed_from_iteration"] == 6
    assert [r["total_loss"] for r in p1a["history"]] == [r["total_loss"] for r in p1b["history"]]
