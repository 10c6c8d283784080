"""The workflow itself: dry run, lint, and a tiny end-to-end run of the real DAG."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _run(args, cwd, timeout=1800):
    result = subprocess.run(SNAKEMAKE + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def _counts(out):
    """{rule: jobs} from a dry run's job-stats table."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}


def test_dry_run_of_the_default_config(repo, tmp_path):
    # 7 sizes x 1 context_dim x 2 seeds = 14 runs per model: cvfp runs Phase 1, it and
    # reset_context export a cache, Phase 2 adds no_context; the LSTM per run, the two
    # n-grams per size and seed (each seed has its own training set)
    counts = _counts(_run(["-n", "--directory", str(tmp_path)], cwd=repo))
    expected = {
        "phase1": 14,
        "state_producer": None,
        "export_contexts": 28,
        "phase1_diagnostics": 14,
        "usable_memory": 14,
        "phase2": 42,
        "baseline_lm": 14,
        # the same 3 x 2 tuning grid for Phase 2 (on cvfp) and the LSTM, one choice each
        "tune_phase2": 6,
        "tune_baseline_lm": 6,
        "tuning_choice": 2,
        "ngram": 28,
        "make_train_set": 14,
        "make_heldout": 1,
        "fit_scaling": 1,
        "verdict": 1,
        "bootstrap_test": 1,
    }
    assert {rule: counts.get(rule) for rule in expected} == expected


def test_dry_run_of_the_ultrachat_study(repo, tmp_path):
    # 5 sizes x 3 context_dims (768/1200/1537) x 3 seeds = 45 runs per model and variant;
    # cvfp, reset_context and no_context for 2 variants (1 vs 2 input tokens), the other
    # models for the first; the two n-grams per size and seed
    counts = _counts(_run(["-n", "--configfile", "config/ultrachat_gpt2.yaml", "--directory", str(tmp_path)], cwd=repo))
    assert (counts["phase2"], counts["baseline_lm"], counts["ngram"]) == (3 * 2 * 45 + 2 * 45, 3 * 45, 2 * 15)


def test_dry_run_of_the_cpu_variant_study(repo, tmp_path):
    # 6 variants x 4 sizes x 3 context_dims x 3 seeds of cvfp, reset_context and no_context
    # (the claims about context_dim, input tokens and dev ER -> PPL need their controls per
    # variant), untrained_context, lstm_states and the baselines for the first variant
    counts = _counts(_run(["-n", "--configfile", "config/cpu_variants.yaml", "--directory", str(tmp_path)], cwd=repo))
    assert (counts["phase2"], counts["baseline_lm"], counts["ngram"]) == (3 * 216 + 2 * 36, 3 * 36, 2 * 12)
    assert counts["export_contexts"] == 2 * 216 + 2 * 36  # cvfp and reset_context per variant


def test_dry_run_of_the_full_chitchat_study(repo, tmp_path):
    # 10 sizes (5..2,560 conversations) x 3 context_dims x 3 seeds, every model
    counts = _counts(_run(["-n", "--configfile", "config/chitchat_full.yaml", "--directory", str(tmp_path)], cwd=repo))
    assert (counts["phase2"], counts["baseline_lm"], counts["ngram"]) == (5 * 90, 3 * 90, 2 * 30)


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


TRAINING_RULES = (
    "phase1",
    "state_producer",
    "export_contexts",
    "phase1_diagnostics",
    "phase2",
    "usable_memory",
    "repetition_study",
    "baseline_lm",
    "tune_phase2",
    "tune_baseline_lm",
)


@pytest.mark.parametrize("profile, gpus, partition", [("profiles/slurm", 0, "cpu"), ("profiles/slurm-gpu", 1, "gpu")])
def test_slurm_profiles_dry_run(repo, tmp_path, profile, gpus, partition):
    """CPU and GPU partitions without --set-resources: the cluster profile says whether
    training jobs ask for a GPU; memory and wall time per rule come from the workflow
    profile (profiles/default), which Snakemake loads under --profile too."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    out = _run(["-n", "--profile", profile, "--configfile", "config/ultrachat_gpt2.yaml", "--directory", str(tmp_path)], cwd=repo)
    jobs = _job_resources(out)
    source = "".join(f.read_text() for f in [repo / "Snakefile", *sorted((repo / "rules").glob("*.smk"))])
    bodies = dict(re.findall(r"^rule (\w+):(.*?)(?=^\S|\Z)", source, re.M | re.S))
    # localrules, and rules that only collect targets (no script), run where Snakemake runs
    local = {
        name
        for name, body in bodies.items()
        if "localrule: True" in body or not re.search(r"^    (script|shell|run):", body, re.M)
    }
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
    for rule in (
        "collect_runs",
        "fit_scaling",
        "sliding_alpha",
        "comparisons",
        "prediction",
        "plot_scaling",
        "plot_analysis",
        "plot_repetition",
        "tokenizer",
    ):
        assert rule in local, rule


def test_memory_and_wall_time_grow_with_each_retry(repo):
    """Every per-rule mem_mb and runtime in the workflow profile doubles with each attempt,
    evaluated as Snakemake evaluates them: a job killed for memory or time is not
    resubmitted with the same limits (tests/test_slurm.py sees it on a real cluster)."""
    import yaml
    from snakemake.cli import parse_set_resources

    profile = yaml.safe_load((repo / "profiles" / "default" / "config.yaml").read_text())
    parsed = parse_set_resources(
        [f"{rule}:{name}={value}" for rule, resources in profile["set-resources"].items() for name, value in resources.items()]
    )
    assert {"phase1", "phase2", "cache_corpus"} <= set(parsed)
    for rule, resources in parsed.items():
        for name in ("mem_mb", "runtime"):
            values = [
                resources[name].evaluate(wildcards={}, input=[], attempt=attempt, threads=2, rulename=rule, async_run=None).value
                for attempt in (1, 2, 3)
            ]
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
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=repo, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(repo, command):
    """ruff lint (E, F, W incl. line length, import order) and formatting of every Python file."""
    result = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# e2e (the tiny study run once per session) is a fixture in conftest.py


MODELS = {
    "cvfp",
    "reset_context",
    "lstm_states",
    "untrained_context",
    "no_context",
    "ngram",
    "ngram_slice",
    "lstm",
    "mingru",
    "transformer",
}
ALL_VARIANTS = {"cvfp", "reset_context", "no_context"}
"""The tiny study's models that run for both variants (the catalogue's all_variants)."""


@pytest.mark.slow
def test_end_to_end_produces_tables_and_figures(e2e):
    _, results = e2e
    runs = pd.read_csv(results / "tables" / "runs.csv")
    # cvfp, reset_context and no_context for both variants, every other model for the
    # first; the n-grams once per size (no context_dim)
    assert set(runs["model"]) == MODELS and set(runs["samples"]) == {6, 12, 24, 48}
    assert len(runs) == 4 * (3 * 2 + 5) + 4 * 2
    assert set(runs.loc[runs["model"].isin(ALL_VARIANTS), "variant"]) == {"base", "tok2"}
    assert set(runs.loc[~runs["model"].isin(ALL_VARIANTS), "variant"]) == {"base"}
    assert runs["test_ppl"].between(1, 50257 * 10).all() and runs["dev_ppl"].notna().all()
    assert runs["undertrained"].isin([True, False]).all()
    cvfp = runs[runs["model"] == "cvfp"]
    assert (cvfp.groupby("variant")["train_tokens"].apply(lambda s: s.is_monotonic_increasing)).all()
    # the same training and test tokens for every model of a size
    assert runs.groupby("samples")["train_tokens"].nunique().eq(1).all()
    assert runs["test_tokens"].nunique() == 1
    fits = pd.read_csv(results / "tables" / "model_fits.csv")
    assert MODELS <= set(fits["model"]) and fits["alpha"].notna().all()
    baselines = pd.read_csv(results / "tables" / "baselines.csv")
    assert set(baselines["model"]) == MODELS
    diagnostics = pd.read_csv(results / "tables" / "diagnostics.csv")
    assert set(diagnostics["identity_check"]) <= {"PASS", "FAIL"} and len(diagnostics) >= 8
    assert set(diagnostics["cvfp_verdict"]) <= {"CONVERGING", "CONVERGED", "DIVERGING", "UNSTABLE"}
    windows = pd.read_csv(results / "tables" / "sliding_alpha.csv")
    assert len(windows) >= 1 and (windows["n_points"] >= 4).all()
    coverage = pd.read_csv(results / "tables" / "data_coverage.csv")
    assert list(coverage["samples"]) == [6, 12, 24, 48]
    assert coverage["test_unseen_tokens"].is_monotonic_decreasing and coverage["dev_unseen_tokens"].is_monotonic_decreasing
    probe = pd.read_csv(results / "tables" / "memory_probe.csv")
    assert set(probe["model"]) == {"cvfp", "untrained_context"} and len(probe) == 4 * 2 + 4
    verdict = (results / "tables" / "verdict.html").read_text()
    assert "cvfp" in verdict.lower() and "%" in verdict
    markdown = (results / "tables" / "verdict.md").read_text()
    # the history gain opens the verdict, the seed notes' claims close it
    assert markdown.index("History gain") < markdown.index("has test PPL") and "## The seed notes' claims" in markdown
    usable = pd.read_csv(results / "tables" / "usable_memory.csv")
    assert set(usable["history"].astype(str)) == {"1", "2", "4", "8", "16", "32", "64", "all"}
    for fig in (
        "scaling",
        "ppl_ratio",
        "phase1_curves",
        "phase2_curves",
        "sliding_alpha",
        "er_vs_ppl",
        "effective_rank",
        "parameter_efficiency",
        "forest",
        "memory",
        "repetition_stages",
        "repetition_topk",
        "repetition_fixed_points",
    ):
        png = results / "figures" / f"{fig}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, fig
        assert (results / "figures" / f"{fig}.svg").is_file(), fig
    metrics = json.loads((results / "runs/cvfp/base/samples6_ctx16_seed0/phase1/metrics.json").read_text())
    assert metrics["provenance"]["device"] == "cpu" and metrics["config"]["phase1"]["dist_reg_weight"] == 0.9
    # training jobs run on TRAINING_THREADS = 1 thread each, side by side under --cores 2
    threads = {
        json.loads(path.read_text())["provenance"]["torch_threads"]
        for path in results.glob("runs/*/base/*/*/metrics.json")
        if path.parent.name in ("phase1", "phase2", "lm") and "ngram" not in path.parts
    }
    assert threads == {1}
    assert len(metrics["history"]) == metrics["summary"]["iterations"]
    nll = np.load(results / "runs/cvfp/base/samples6_ctx16_seed0/phase2/test_token_nll.npy")
    p2 = json.loads((results / "runs/cvfp/base/samples6_ctx16_seed0/phase2/metrics.json").read_text())["summary"]
    assert nll.shape == (p2["test_tokens"],) and float(nll.astype("float64").mean()) == pytest.approx(p2["test_loss"], rel=1e-6)


@pytest.mark.slow
def test_every_family_trains_the_same_trials_and_every_run_trains_with_its_choice(e2e):
    _, results = e2e
    table = pd.read_csv(results / "tables" / "tuning.csv")
    trials = table.groupby("model")["trial"].nunique()
    assert trials.to_dict() == {"cvfp": 2, "lstm": 2, "mingru": 2, "transformer": 2}  # config/test.yaml's 2 x 1 grid
    chosen = table[table["chosen"]].set_index("model")
    assert len(chosen) == 4 and chosen.index.is_unique
    best = table.loc[table.groupby("model")["dev_loss"].idxmin()].set_index("model")
    assert (best["trial"] == chosen["trial"]).all()  # the lowest dev loss, never a test score
    for path in results.glob("tuning/*/*/*/*/*/metrics.json"):
        assert not [key for key in json.loads(path.read_text())["summary"] if key.startswith("test")], path
    for path in results.glob("runs/*/*/*/*/metrics.json"):
        metrics, model = json.loads(path.read_text()), path.parts[-5]
        if path.parent.name == "phase2":  # every context model: Phase 2's choice, made on cvfp
            settings, tuned = metrics["config"]["phase2"], "cvfp"
        elif path.parent.name == "lm" and "baseline" in metrics and model in chosen.index:
            settings, tuned = metrics["baseline"]["settings"], model
        else:
            continue
        assert settings["learning_rate"] == pytest.approx(chosen.loc[tuned, "learning_rate"]), path
        assert settings["dropout"] == chosen.loc[tuned, "dropout"], path
    verdict = (results / "tables" / "verdict.md").read_text()
    assert verdict.index("## Tuning") < verdict.index("## The seed notes' claims")


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
def test_dev_test_and_embedding_slice_are_disjoint_from_each_other_and_every_training_set(e2e):
    _, results = e2e
    heldout = {
        name: set(json.loads((results / "data" / f"{name}.json").read_text())["sample_ids"])
        for name in ("dev", "test", "embedding_pool")
    }
    assert [len(v) for v in heldout.values()] == [4, 6, 40]
    assert heldout["dev"].isdisjoint(heldout["test"]) and heldout["embedding_pool"].isdisjoint(heldout["dev"] | heldout["test"])
    for size in (6, 12, 24, 48):
        train = json.loads((results / "data" / "train" / "seed0" / f"samples{size}.json").read_text())
        assert len(train["sample_ids"]) == size
        for name, ids in heldout.items():
            assert ids.isdisjoint(train["sample_ids"]), (name, size)


@pytest.mark.slow
def test_figures_regenerate_from_tables_without_retraining(repo, e2e):
    """The README's redraw command, as written there: it names every plot rule, and it
    reruns each of them and nothing that trains."""
    workdir, results = e2e
    command = next(line for line in (repo / "README.md").read_text().splitlines() if "--forcerun" in line and "redraw" in line)
    forced = command.split("#")[0].split("--forcerun")[1].split()
    plot_rules = set(re.findall(r"^rule (plot_\w+):", "".join(p.read_text() for p in (repo / "rules").glob("*.smk")), re.M))
    assert plot_rules and plot_rules <= set(forced), (sorted(plot_rules), forced)
    weights = results / "runs/cvfp/base/samples24_ctx16_seed0/phase2/token_block.safetensors"
    before = weights.stat().st_mtime_ns
    out = _run(["--cores", "1", "--configfile", "config/test.yaml", "--directory", str(workdir), "--forcerun", *forced], cwd=repo)
    ran = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert set(forced) <= ran, (forced, out[-3000:])
    trained = {"phase1", "phase2", "baseline_lm", "ngram", "export_contexts"}
    assert not trained & ran
    assert weights.stat().st_mtime_ns == before


@pytest.mark.slow
def test_report_builds(repo, e2e):
    workdir, _ = e2e
    _run(["--configfile", "config/test.yaml", "--directory", str(workdir), "--report", str(workdir / "report.html")], cwd=repo)
    html = (workdir / "report.html").read_text(errors="ignore")
    assert len(html) > 50_000
    for name in ("scaling.png", "forest.png", "memory.png", "verdict.html", "baselines.csv", "comparison.csv"):
        assert name in html, name
    for category in ("Overview", "Data", "Phase 1", "Scaling", "Diagnostics", "Repetition"):
        assert f'"{category}"' in html, category


@pytest.mark.slow
def test_killed_and_resumed_phase2_job_matches_the_uninterrupted_one(repo, e2e, tmp_path):
    """SIGKILL a Phase 2 job (the whole Snakemake process group) right after its first
    checkpoint, rerun the workflow: the final metrics equal those of the uninterrupted e2e
    run (same config, same machine).  The kill comes from here, not from the package."""
    import signal
    import time

    _, results = e2e
    run = "runs/cvfp/base/samples48_ctx16_seed0"
    target = f"results/test/{run}/phase2/metrics.json"
    args = ["--cores", "2", "--configfile", "config/test.yaml", "--directory", str(tmp_path), target]
    checkpoint = tmp_path / "results/test/checkpoints" / run.removeprefix("runs/") / "phase2/checkpoint.safetensors"
    proc = subprocess.Popen(
        SNAKEMAKE + args, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while not checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.is_file(), "the Phase 2 job finished before it could be killed"
    # a killed Snakemake leaves its lock behind; the README's recovery is --unlock, then rerun
    _run([*args, "--unlock"], cwd=repo)
    _run(args, cwd=repo)
    assert not checkpoint.exists()  # removed after success
    a = json.loads((results / run / "phase2/metrics.json").read_text())
    b = json.loads((tmp_path / "results/test" / run / "phase2/metrics.json").read_text())
    assert b["summary"]["resumed_from_step"] is not None
    for key in ("dev_ppl", "dev_accuracy", "test_ppl", "best_step", "steps", "stopped_by"):
        assert a["summary"][key] == b["summary"][key], key
    assert [r["dev_loss"] for r in a["history"]] == [r["dev_loss"] for r in b["history"]]
