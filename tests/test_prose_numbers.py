"""Numbers stated in prose (config headers, README) agree with what they describe: the
config values themselves and the job counts of a dry run."""

import re
import subprocess
import sys

import pytest
import yaml

from newllm.config import SCHEMA_PATH, load_schema


def _config(repo, name):
    return yaml.safe_load((repo / "config" / name).read_text())


def _header(repo, name):
    lines = (repo / "config" / name).read_text().splitlines()
    return " ".join(line.lstrip("# ").strip() for line in lines if line.startswith("#"))


def test_default_study_header_states_its_design(repo):
    cfg, text = _config(repo, "config.yaml"), _header(repo, "config.yaml")
    sizes = cfg["sample_sizes"]
    assert f"{len(sizes)} nested sizes" in text
    assert f"({max(sizes) // min(sizes)}x in conversations)" in text
    assert f"x {len(cfg['seeds'])} training seeds" in text


def test_default_study_tuning_comment_states_its_grid(repo):
    cfg, text = _config(repo, "config.yaml"), _header(repo, "config.yaml")
    grid = cfg["tuning"]
    assert f"the same {len(grid['learning_rate_factors'])} learning-rate factors x {len(grid['dropouts'])} dropouts" in text
    assert grid.get("samples") is None and "at the middle size, first seed" in text


def test_full_study_header_states_its_design(repo):
    cfg, text = _config(repo, "chitchat_full.yaml"), _header(repo, "chitchat_full.yaml")
    sizes = cfg["sample_sizes"]
    assert f"{len(sizes)} nested sizes from {min(sizes):,} to {max(sizes):,} conversations" in text
    assert f"({max(sizes) // min(sizes)}x;" in text
    assert "context_dim " + "/".join(map(str, cfg["context_dims"])) in text
    assert f"{len(cfg['seeds'])} training seeds" in text
    default_models = load_schema(SCHEMA_PATH)["properties"]["models"]["default"]
    assert cfg["models"] == default_models  # "every model of the catalogue"


def test_variant_and_source_study_headers(repo):
    cfg, text = _config(repo, "cpu_variants.yaml"), _header(repo, "cpu_variants.yaml")
    assert "context_dim (" + "/".join(map(str, cfg["context_dims"])) + ")" in text
    assert {"reset_context", "no_context"} <= set(cfg["models"])
    cfg, text = _config(repo, "ultrachat_gpt2.yaml"), _header(repo, "ultrachat_gpt2.yaml")
    assert "context_dim " + " / ".join(map(str, cfg["context_dims"])) in text
    assert f"{min(cfg['sample_sizes'])}–{max(cfg['sample_sizes'])} conversations" in text


@pytest.mark.slow
def test_example_study_header_counts_its_jobs(repo, tmp_path):
    text = _header(repo, "example_local.yaml")
    stated = int(re.search(r"\((\d+) jobs\)", text).group(1))
    lines = (repo / "tests" / "data" / "example_corpus.jsonl").read_text().splitlines()
    assert f"holds {len(lines)} made-up conversations" in text
    cfg = _config(repo, "example_local.yaml")
    cfg["corpus"]["path"] = str(repo / cfg["corpus"]["path"])  # relative to the project, not to --directory
    (tmp_path / "example.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(tmp_path / "example.yaml"), "--directory", str(tmp_path)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert int(re.search(r"^total\s+(\d+)$", out.stdout, re.M).group(1)) == stated


def test_readme_states_no_job_count_or_wall_time(repo):
    text = (repo / "README.md").read_text()
    assert not re.search(r"\b\d[\d,]* (jobs|runs)\b", text)
    assert not re.search(r"\b\d+(\.\d+)? ?(s|min|minutes|hours?|h)\b(?! of)", text.split("## What a finished run says")[0])
