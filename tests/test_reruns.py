"""Reruns and provenance on a finished study: what Snakemake plans after an
edit to the package (a statement, or only docstrings and comments), a config that changes a study's data, the git revision under
``--directory``, temp() context caches and ``--delete-all-output``.

One finished study is made cheaply, once: a git checkout of the workflow in a temp
folder, the real ``data_provenance`` job of config/test.yaml, every other output of its
DAG written as a placeholder and recorded with ``snakemake --touch --forceall`` (so
Snakemake holds each job's params, code hashes included).  Every test then runs a dry run or a job that
is refused before it starts, and puts back what it changed.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from base64 import urlsafe_b64encode
from pathlib import Path

import pytest

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
COPIED = ["Snakefile", "rules", "config", "workflow_scripts", "newllm", "envs", "report", ".gitignore"]
DATA_RULES = {"tokenizer", "data_provenance", "cache_corpus", "make_heldout", "make_train_set", "token_embeddings"}
PLOT_RULES = {"plot_scaling", "plot_phase1", "plot_phase2", "plot_analysis", "plot_repetition", "plot_memory"}


def _git(root, *args):
    return subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _snakemake(project, work, *args, configs=(), check=True):
    """Snakemake on config/test.yaml (plus ``configs``) in ``work``: (exit code, output)."""
    result = subprocess.run(
        [*SNAKEMAKE, *args, "--configfile", "config/test.yaml", *map(str, configs), "--directory", str(work)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = result.stdout + result.stderr
    if check:
        assert result.returncode == 0, f"snakemake {' '.join(args)} failed:\n{out[-4000:]}"
    return result.returncode, out


def _planned(out):
    """{rule: jobs} of a dry run's job table ({} when nothing is to be done)."""
    table = re.search(r"^job\s+count\n-+\s+-+\n(.*?)^total", out, re.M | re.S)
    return (
        {} if table is None else {line.split()[0]: int(line.split()[1]) for line in table.group(1).splitlines() if line.strip()}
    )


def _snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def study(repo, tmp_path_factory):
    """(project checkout, working directory, job table of the whole study)."""
    root = tmp_path_factory.mktemp("reruns")
    project, work = root / "project", root / "work"
    for name in COPIED:
        src = repo / name
        if src.is_dir():
            shutil.copytree(src, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            project.mkdir(exist_ok=True)
            shutil.copy2(src, project / name)
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "workflow")
    work.mkdir()
    _git(work, "init", "-q")  # another repository: the one the jobs run in
    _git(work, "commit", "-q", "--allow-empty", "-m", "not the project")
    _snakemake(project, work, "--cores", "1", "results/test/provenance.json")
    _, plan = _snakemake(project, work, "-n")
    outputs = {f.strip() for line in plan.splitlines() if line.startswith("    output: ") for f in line[12:].split(",")}
    for name in outputs:
        path = work / name
        if path.exists():
            continue
        if path.suffix == "":  # directory() outputs: the checkpoint folder, per-run figure folders
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text('{"num_samples": 300}' if path.name == "manifest.json" else "0")
    # --forceall: every job is touched in DAG order and its params recorded.  A plain
    # --touch skips jobs Snakemake sees as up to date by mtime; the placeholders above are
    # written in set order, so which jobs those were (and so which had no recorded params
    # to compare against) changed from run to run.
    _snakemake(project, work, "--cores", "1", "--touch", "--forceall")
    unrecorded = [n for n in outputs if not (work / ".snakemake/metadata" / urlsafe_b64encode(n.encode()).decode()).exists()]
    assert not unrecorded, f"no Snakemake metadata for {unrecorded}"
    return project, work, _planned(plan)


STATEMENT = "\n_EDITED = True  # a statement: changes the module's code\n"


def _edit(path, text):
    original = path.read_bytes()
    path.write_bytes(original + text.encode())
    return original


def _edit_docs(path):
    """Reword every docstring of ``path`` (module, classes, functions), add a comment and a
    blank line before every top-level function; returns the original bytes."""
    original = path.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    docstrings = [
        node.body[0].value
        for node in ast.walk(ast.parse(original))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
        and isinstance(node.body[0].value.value, str)
    ]
    for doc in sorted(docstrings, key=lambda d: (d.lineno, d.col_offset), reverse=True):
        line = lines[doc.lineno - 1]
        quote = re.match(r"[rRuU]?(\"\"\"|'''|\"|')", line[doc.col_offset :])  # indented: col_offset bytes = chars
        at = doc.col_offset + quote.end()
        lines[doc.lineno - 1] = line[:at] + "Reworded. " + line[at:]
    source = "".join(lines)
    source = re.sub(r"^(def \w+\()", "# a comment\n\n\\1", source, flags=re.M)
    path.write_text(source)
    return original


def _rules_importing(project, module):
    """Rules whose workflow script imports ``module`` (a file of the package), directly or
    through other package modules (newllm.provenance.module_closure)."""
    from newllm.provenance import module_closure

    found = set()
    for smk in (project / "rules").glob("*.smk"):
        for block in re.split(r"^(?=rule \w+:$)", smk.read_text(), flags=re.M):
            rule = re.match(r"rule (\w+):\n", block)
            script = re.search(r'^    script:\n\s+"\.\./(workflow_scripts/\w+\.py)"', block, re.M)
            if rule and script and module in module_closure(project / script.group(1), project / "newllm"):
                found.add(rule.group(1))
    return found


def test_editing_a_plot_module_plans_only_the_plots(study):
    project, work, _ = study
    module = project / "newllm" / "plots" / "style.py"
    using = _rules_importing(project, module)
    assert PLOT_RULES <= using, using  # and rules that draw a figure besides their tables
    original = _edit(module, STATEMENT)
    try:
        _, out = _snakemake(project, work, "-n")
    finally:
        module.write_bytes(original)
    assert set(_planned(out)) == using | {"all"}, out[-3000:]


def test_editing_phase2_plans_phase2_and_everything_downstream(study):
    project, work, everything = study
    module = project / "newllm" / "phase2.py"
    original = _edit(module, STATEMENT)
    try:
        _, out = _snakemake(project, work, "-n")
    finally:
        module.write_bytes(original)
    planned = _planned(out)
    assert planned["phase2"] == everything["phase2"]
    assert "baseline_lm" not in planned  # the baselines share newllm/trainer.py and newllm/head.py, not newllm/phase2.py
    assert {"collect_runs", "bootstrap_test", "fit_scaling", "verdict", "plot_scaling", "plot_phase2"} <= set(planned)
    upstream = DATA_RULES | {
        "phase1",
        "export_contexts",
        "phase1_diagnostics",
        "ngram",
        "repetition_study",
        "plot_repetition",
        "checkpoint_store",
        "data_coverage",
    }
    assert not upstream & set(planned), planned


def test_editing_only_docstrings_and_comments_reruns_nothing(study):
    """newllm.provenance.code_hash hashes the syntax tree without docstrings: rewording
    them, adding comments or blank lines in modules Phase 2 uses cannot change a result."""
    project, work, _ = study
    modules = [project / "newllm" / name for name in ("phase2.py", "head.py", "data.py") if (project / "newllm" / name).exists()]
    originals = {module: _edit_docs(module) for module in modules}
    try:
        for module, original in originals.items():
            assert module.read_bytes() != original and "Reworded. " in module.read_text(), module
        _, out = _snakemake(project, work, "-n")
    finally:
        for module, original in originals.items():
            module.write_bytes(original)
    assert "Nothing to be done" in out, out[-3000:]


def test_a_checkout_that_only_touches_files_reruns_nothing(study):
    """Also checks the finished study: nothing to do before any edit."""
    project, work, _ = study
    for path in (project / "newllm").rglob("*.py"):
        os.utime(path)  # newer than every output, same content
    _, out = _snakemake(project, work, "-n")
    assert "Nothing to be done" in out, out[-3000:]


def test_git_revision_is_the_projects_under_directory(study):
    project, work, _ = study
    recorded = json.loads((work / "results/test/provenance.json").read_text())["git"]
    assert recorded == {"revision": _git(project, "rev-parse", "HEAD"), "dirty": False}
    assert recorded["revision"] != _git(work, "rev-parse", "HEAD")


def test_other_data_for_an_existing_study_is_refused_and_nothing_deleted(study, tmp_path):
    project, work, _ = study
    changed = tmp_path / "changed.yaml"
    changed.write_text("corpus: {max_samples: 250}\nvalidation: {seed: 7}\n")
    before = _snapshot(work / "results")
    code, out = _snakemake(project, work, "--cores", "1", configs=[changed], check=False)
    assert code != 0
    for text in (
        "study 'test'",
        "corpus.max_samples: 300 -> 250",
        "validation.seed: 0 -> 7",
        "--config study=NEW_NAME",
        "--config rebuild_data=True",
        "Nothing was run or deleted",
    ):
        assert text in out, (text, out[-3000:])
    assert _snapshot(work / "results") == before
    # the explicit way out plans the rebuild
    rebuild = ("--config", "rebuild_data=True")
    _, out = _snakemake(project, work, "-n", *rebuild, configs=[changed])
    expected = {"data_provenance", "cache_corpus", "make_heldout", "phase1", "phase2"}
    if not expected <= set(_planned(out)):  # say why: the job table, the reasons, the recorded params
        _, changes = _snakemake(project, work, "--list-changes", "params", *rebuild, configs=[changed], check=False)
        table = re.search(r"^job\s+count$.*?^total.*?$", out, re.M | re.S)
        reasons = re.findall(r"^rule (\w+):$.*?^    reason: (.*?)$", out, re.M | re.S)
        table = table and table.group(0)
        pytest.fail(f"planned {_planned(out)}\ntable:\n{table}\nreasons: {reasons}\nparams changed:\n{changes[-3000:]}")


def test_a_missing_local_corpus_is_a_dag_error_even_with_a_cache(study, tmp_path):
    project, work, _ = study
    changed = tmp_path / "local.yaml"
    changed.write_text(f"corpus: {{name: mine, source: local, path: {tmp_path / 'gone.jsonl'}}}\n")
    before = _snapshot(work / "results")
    code, out = _snakemake(project, work, "--cores", "1", configs=[changed], check=False)
    assert code != 0 and "gone.jsonl' does not exist" in out, out[-3000:]
    assert _snapshot(work / "results") == before


def test_context_caches_are_temp_only_when_asked(study, tmp_path):
    project, work, everything = study
    _, out = _snakemake(project, work, "--delete-temp-output", "-n")
    assert "context_cache" not in out
    switch = tmp_path / "temp.yaml"
    switch.write_text("context_cache: {temp: true}\n")
    _, out = _snakemake(project, work, "--delete-temp-output", "-n", configs=[switch])
    caches = re.findall(r"Would delete (\S+/context_cache/(?:train|dev|test)\.npy)", out)
    assert len(caches) == 3 * everything["export_contexts"], out[-3000:]


def test_delete_all_output_removes_the_checkpoints(study):
    project, work, _ = study
    _, out = _snakemake(project, work, "--delete-all-output", "-n")
    assert "Would delete results/test/checkpoints" in out
