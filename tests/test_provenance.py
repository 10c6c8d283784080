"""Unit tests: code hashes, data provenance, git state, devices,
hub access, and the library replacements in data loading.  No Snakemake runs here
(tests/test_reruns.py runs the workflow)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from newllm import hub, provenance, runtime
from newllm.data import build_corpus_cache, count_source_samples, load_corpus_dataset
from newllm.io import sha256_file
from newllm.pipeline import run_checkpoint
from newllm.provenance import (
    ProvenanceError,
    check_data_provenance,
    code_hash,
    data_provenance,
    module_closure,
    provenance_changes,
)


# --------------------------------------------------------------------------- code hashes
def _names(files, root):
    return {f.relative_to(root).as_posix() for f in files}


def test_closure_follows_imports_of_imports(repo):
    package = repo / "newllm"
    phase2 = _names(module_closure(repo / "workflow_scripts" / "phase2.py"), package)
    assert {"__init__.py", "phase2.py", "pipeline.py", "model.py", "checkpoint.py", "training.py"} <= phase2
    assert not any(name.startswith(("plots/", "analysis/")) for name in phase2), phase2
    plots = _names(module_closure(repo / "workflow_scripts" / "plot_scaling.py"), package)
    assert {"plots/__init__.py", "plots/scaling.py", "plots/style.py"} <= plots and "phase2.py" not in plots
    # the baselines share Phase 2's loop and fused loss (newllm/trainer.py, newllm/head.py), not newllm/phase2.py
    baseline = _names(module_closure(repo / "workflow_scripts" / "train_baseline.py"), package)
    assert {"baselines/__init__.py", "baselines/training.py", "trainer.py", "head.py"} <= baseline and "phase2.py" not in baseline


def test_closure_sees_relative_and_function_level_imports(tmp_path):
    pkg = tmp_path / "newllm"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import a\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..b import g\n    return g\n")
    (pkg / "b.py").write_text("from .c import x\n")
    (pkg / "c.py").write_text("x = 1\n")
    (pkg / "unused.py").write_text("")
    script = tmp_path / "script.py"
    script.write_text("import os\nfrom newllm.sub import a\nfrom newllm.c import x  # a name, c.py is the module\n")
    assert _names(module_closure(script, pkg), pkg) == {"__init__.py", "sub/__init__.py", "sub/a.py", "b.py", "c.py"}


def test_code_hash_is_a_content_hash(tmp_path):
    pkg = tmp_path / "newllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text("X = 1\n")
    script = tmp_path / "s.py"
    script.write_text("from newllm import m\n")
    first = code_hash.__wrapped__(script, pkg)
    os.utime(pkg / "m.py", (1, 1))  # a checkout that only changes modification times
    assert code_hash.__wrapped__(script, pkg) == first and len(first) == provenance.CODE_HASH_CHARS
    (pkg / "m.py").write_text("X = 2\n")
    assert code_hash.__wrapped__(script, pkg) != first


def test_checkpoint_fingerprint_and_place_follow_code_and_store(tmp_path):
    out = tmp_path / "results/s/runs/cvfp/base/samples6_ctx16_seed0/phase2/token_block.safetensors"
    stream = tmp_path / "x.npy"
    stream.write_bytes(b"1")
    run = {"model": "cvfp", "variant": "base", "samples": 6, "context_dim": 16, "seed": 0}
    store = str(tmp_path / "results/s/checkpoints")

    def spec(code, checkpoints=store, **settings):
        params = SimpleNamespace(run={"run": run}, code=code, checkpoints=checkpoints, **settings)
        return run_checkpoint(SimpleNamespace(params=params, input={"train": str(stream)}), out, every=1)

    a, b = spec("aaaa"), spec("bbbb")
    assert a.fingerprint != b.fingerprint  # a checkpoint made by other code is not resumed
    # nor one made with other settings the rule reads beside its run config (baseline_lm: baselines)
    small, large = ({"lstm": {"hidden": h}} for h in (8, 9))
    assert spec("aaaa", baselines=small).fingerprint != spec("aaaa", baselines=large).fingerprint
    assert spec("aaaa", checkpoints=None).fingerprint == a.fingerprint  # the checkpoint folder is no setting
    assert a.path == tmp_path / "results/s/checkpoints/cvfp/base/samples6_ctx16_seed0/phase2/checkpoint.safetensors"
    assert spec("aaaa", checkpoints=None).path == out.parent / "checkpoint.safetensors"
    # a tuning trial of the same run keeps its checkpoint apart from the run's
    out = tmp_path / "results/s/tuning/cvfp/base/samples6_ctx16_seed0/lr2_dropout0/phase2/token_block.safetensors"
    trial = "results/s/checkpoints/tuning/cvfp/base/samples6_ctx16_seed0/lr2_dropout0/phase2/checkpoint.safetensors"
    assert spec("aaaa").path == tmp_path / trial


# --------------------------------------------------------------------------- data provenance
def _config(**corpus):
    return {
        "study": "s",
        "corpus": {"name": "chitchat", "source": "chitchat_dataset", "max_samples": 300, **corpus},
        "tokenizer": "packaged",
        "embeddings": {"source": "word2vec", "embed_dim": 16},
        "validation": {"dev_samples": 8, "test_samples": 10, "embedding_samples": 40, "seed": 0, "require_full_coverage": False},
    }


def test_a_new_study_passes_and_an_unchanged_one_too(tmp_path):
    config = _config()
    assert check_data_provenance(config, tmp_path / "results/s") == data_provenance(config)
    (tmp_path / "results/s").mkdir(parents=True)
    (tmp_path / "results/s/provenance.json").write_text(json.dumps({**data_provenance(config), "git": {}}))
    # require_full_coverage does not change the data; tuples and lists compare equal
    check_data_provenance(
        {**config, "validation": {**config["validation"], "require_full_coverage": True}}, tmp_path / "results/s"
    )


def test_changed_data_is_refused_naming_keys_and_ways_out(tmp_path):
    study = tmp_path / "results/s"
    study.mkdir(parents=True)
    (study / "provenance.json").write_text(json.dumps(data_provenance(_config())))
    changed = _config(max_samples=250)
    changed["validation"]["seed"] = 3
    with pytest.raises(ProvenanceError) as err:
        check_data_provenance(changed, study)
    message = str(err.value)
    assert "corpus.max_samples: 300 -> 250" in message and "validation.seed: 0 -> 3" in message
    assert "study" in message and "--config rebuild_data=True" in message and "Nothing was run or deleted" in message
    check_data_provenance({**changed, "rebuild_data": True}, study)  # the explicit way out


def test_a_study_built_before_provenance_json_is_checked_by_its_manifest(tmp_path):
    study = tmp_path / "results/s"
    (study / "data/corpus").mkdir(parents=True)
    (study / "data/corpus/manifest.json").write_text(json.dumps({"num_samples": 5, "corpus": _config()["corpus"]}))
    check_data_provenance(_config(), study)
    with pytest.raises(ProvenanceError, match="corpus.source: 'chitchat_dataset' -> 'local'"):
        check_data_provenance(_config(source="local", path=str(study / "data/corpus/manifest.json")), study)


def test_a_missing_local_corpus_is_an_error_even_with_a_cache(tmp_path):
    study = tmp_path / "results/s"
    study.mkdir(parents=True)
    config = _config(source="local", path=str(tmp_path / "gone.jsonl"))
    (study / "provenance.json").write_text(json.dumps(data_provenance(config)))
    with pytest.raises(ProvenanceError, match="gone.jsonl' does not exist"):
        check_data_provenance(config, study)


# --------------------------------------------------------------------------- git, device, seeding
def _git(root, *args):
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True)


def test_git_state_is_the_projects_and_says_dirty(tmp_path):
    assert runtime.git_state(tmp_path) == {"revision": None, "dirty": None}  # not a checkout
    (tmp_path / "newllm").mkdir()
    (tmp_path / "newllm/__init__.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "newllm", "notes.txt")
    _git(tmp_path, "commit", "-qm", "x")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert runtime.git_state(tmp_path) == {"revision": head, "dirty": False}
    (tmp_path / "scratch.log").write_text("")  # untracked, outside the code: still clean
    assert runtime.git_state(tmp_path)["dirty"] is False
    (tmp_path / "newllm/new_module.py").write_text("")  # untracked code
    assert runtime.git_state(tmp_path)["dirty"] is True
    (tmp_path / "newllm/new_module.py").unlink()
    (tmp_path / "notes.txt").write_text("edited")  # a tracked file changed
    assert runtime.git_state(tmp_path)["dirty"] is True


def test_provenance_records_the_project_revision_from_any_directory(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as a job under `snakemake --directory`
    info = runtime.provenance(torch.device("cpu"))
    expected = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert info["git_revision"] == expected and isinstance(info["git_dirty"], bool)


@pytest.mark.parametrize("kind", ["cuda", "mps", "xpu", None])
def test_auto_device_uses_torch_accelerator(monkeypatch, kind):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: kind is not None)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device(kind) if kind else None)
    expected = kind if kind in ("cuda", "mps") else "cpu"
    assert runtime.resolve_device("auto") == torch.device(expected)


def test_explicit_devices_are_checked():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    if not torch.backends.mps.is_available():
        with pytest.raises(RuntimeError, match="mps"):
            runtime.resolve_device("mps")
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N, mps"):
        runtime.resolve_device("tpu")


def test_seeding_sets_the_cublas_workspace(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    runtime.seed_everything(0, threads=1)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own choice wins
    runtime.seed_everything(0, threads=1)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


_DETERMINISTIC = """
import sys, torch
from newllm.runtime import seed_everything
seed_everything(0, threads=1)
print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
      "torch._inductor.config" in sys.modules)
"""


def test_seeding_asks_for_deterministic_warn_only_kernels_without_loading_the_inductor():
    # a fresh process: the inductor is not loaded before, and seeding must not load it
    out = subprocess.run([sys.executable, "-c", _DETERMINISTIC], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "False"], out


def test_seeding_after_the_inductor_loaded_sets_its_flag_too(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "deterministic", False)
    runtime.seed_everything(0, threads=1)
    assert inductor_config.deterministic and torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()


_SWEEP_FAULTS = """
import resource, sys, torch
from newllm.model import ContextBlock, ModelConfig, TokenInput, init_weights
from newllm.phase1 import Phase1Config, phase1_iteration, start_phase1, training_sweep
from newllm.runtime import HEAP_KEEP_BYTES, keep_freed_memory, provenance
if sys.argv[1] == "keep":
    assert keep_freed_memory() == HEAP_KEEP_BYTES
    assert provenance(torch.device("cpu"))["malloc_heap_keep_bytes"] == HEAP_KEEP_BYTES
torch.manual_seed(0)
block = ContextBlock(ModelConfig(128, 16))
init_weights(block)
run = start_phase1(block, TokenInput(torch.randn(500, 16)), torch.randint(0, 500, (70_000,)), None, Phase1Config(), 0)
for iteration in (1, 2, 3, 4):
    phase1_iteration(run, iteration, "test", None)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    training_sweep(block, run.token_input, run.train, run.cfg, run.gen)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or runtime.platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_phase1_sweeps_reuse_kept_heap_memory_instead_of_faulting_in_fresh_pages():
    # A sweep allocates two [70,000, 128] float32 tensors (34 MiB, 8,750 pages of 4 KiB each,
    # above glibc's 32 MiB ceiling for its dynamic mmap threshold): by default each is
    # mapped afresh, so four sweeps fault in at least 8 x 8,750 zero-filled pages; with
    # keep_freed_memory, once the heap has grown to its steady size (four iterations
    # here), they reuse freed heap memory (0-500 faults in practice; the bound allows one
    # fresh tensor, as glibc's placement of aligned blocks may still take one).
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", _SWEEP_FAULTS, mode], capture_output=True, text=True, check=True).stdout)
        for mode in ("default", "keep")
    }
    assert faults["default"] >= 8 * 8750, faults
    assert faults["keep"] < 2 * 8750, faults


_FIRST_CALL = """
import hashlib, sys, torch
from newllm.runtime import seed_everything
seed_everything(0, threads=2)
g = torch.Generator().manual_seed(0)
logits = torch.randn(64, 16, generator=g) @ (3 * torch.randn(16898, 16, generator=g)).t()
shifted = logits - logits.amax(dim=1, keepdim=True)
print(hashlib.sha256(shifted.exp_().numpy().tobytes()).hexdigest())
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the first-call difference needs two threads")
def test_first_multithreaded_exp_in_a_process_is_reproducible():
    """The first ``exp`` of a process after a matrix product, on two threads, gave
    last-bit differences in about one process in four before seed_everything called the
    math kernels once on one thread (a resumed Phase 2 job's dev PPL moved by 3e-9)."""
    root = Path(__file__).resolve().parents[1]
    run = [sys.executable, "-c", _FIRST_CALL]
    digests = {subprocess.run(run, cwd=root, capture_output=True, text=True, check=True).stdout for _ in range(8)}
    assert len(digests) == 1, digests


# --------------------------------------------------------------------------- hub access
@pytest.mark.parametrize(
    "user, online",
    [({}, True), ({"HF_HUB_OFFLINE": "1"}, False), ({"HF_DATASETS_OFFLINE": "true"}, False), ({"HF_HUB_OFFLINE": "0"}, True)],
)
def test_jobs_run_offline_and_retrieve_rules_follow_the_user(user, online):
    env = dict(user)
    assert hub.record_hub_access(env) is online
    assert env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"  # every job
    hub.record_hub_access(env)  # a job re-reading the Snakefile keeps the first choice
    assert hub.restore_hub_access(env) is online  # a local retrieve job
    assert env["HF_HUB_OFFLINE"] == ("0" if online else "1")


def _rows(n):
    return [{"prompt_id": f"id{i}", "messages": [{"role": "user", "content": f"text {i}"}]} for i in range(n)]


def test_retrieve_streams_only_max_samples_rows(tmp_path, monkeypatch):
    import datasets

    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _rows(50)))
    calls, real_load = [], datasets.load_dataset

    def fake_load(path, split, streaming=False, revision=None):  # the hub, served from a local file
        calls.append((streaming, revision))
        return real_load("json", data_files=str(source), split=split, streaming=streaming, cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(hub, "resolved_revision", lambda repo, revision, kind: f"sha-of-{revision}-{kind}")
    corpus = {"source": "hub", "path": "org/corpus", "split": "train", "max_samples": 7, "revision": "v1"}
    info = hub.retrieve_corpus_rows(corpus, tmp_path / "out/hub_rows.parquet", online=True)
    assert info == {
        "repo_id": "org/corpus",
        "split": "train",
        "rows": 7,
        "streamed": True,
        "revision": "v1",
        "resolved_revision": "sha-of-v1-dataset",
    }
    assert calls == [(True, "v1")]
    monkeypatch.undo()
    rows = load_corpus_dataset(corpus, tmp_path / "stage", hub_rows=tmp_path / "out/hub_rows.parquet")
    assert rows["prompt_id"] == [f"id{i}" for i in range(7)]
    assert (
        count_source_samples({"source": "local", "path": str(tmp_path / "out/hub_rows.parquet"), "data_format": "parquet"}) == 7
    )


def test_retrieve_checkpoint_pins_the_revision_and_records_its_commit(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = tmp_path / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"")
    seen = {}

    def fake_download(repo_id, revision=None, allow_patterns=None, local_files_only=False):
        seen.update(repo_id=repo_id, revision=revision, offline=local_files_only)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    info = hub.retrieve_checkpoint("org/gpt2", online=False, revision="0123abc")
    assert seen == {"repo_id": "org/gpt2", "revision": "0123abc", "offline": True}
    assert info["revision"] == "0123abc" and info["resolved_revision"] == "0123abc"


def test_a_setting_added_later_with_a_null_default_changes_no_provenance():
    assert provenance_changes({"corpus": {"name": "c"}}, {"corpus": {"name": "c", "revision": None}}) == []
    assert provenance_changes({"corpus": {"name": "c"}}, {"corpus": {"name": "c", "revision": "v1"}}) == [
        "corpus.revision: '(absent)' -> 'v1'"
    ]


def test_retrieve_offline_without_cache_says_why(tmp_path, monkeypatch):
    import datasets

    def missing(*args, **kwargs):
        raise ConnectionError("offline and not cached")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(hub.HubError, match="HF_HOME"):
        hub.retrieve_corpus_rows({"source": "hub", "path": "org/c", "split": "train"}, tmp_path / "r.parquet", online=False)
    assert not (tmp_path / "r.parquet").exists()


# --------------------------------------------------------------------------- library replacements
class _Tokenizer:
    """Character codes as token ids: enough to check what build_corpus_cache reads."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) % 50000 for c in t] for t in texts]}


def test_corpus_cache_reads_datasets_and_streams_alike(tmp_path):
    import datasets

    rows = _rows(30) + [_rows(1)[0]] + [{"prompt_id": "empty", "messages": []}]  # a duplicate and an empty sample
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    eager = datasets.Dataset.from_list(rows)
    streamed = datasets.load_dataset("json", data_files=str(source), split="train", streaming=True)
    a = build_corpus_cache(eager, _Tokenizer(), tmp_path / "a", batch_size=7)
    b = build_corpus_cache(streamed, _Tokenizer(), tmp_path / "b", batch_size=5)
    assert a["files"] == b["files"] and a["sample_ids"] == b["sample_ids"]
    assert (a["num_samples"], a["rows_read"], a["dropped_duplicates"], a["dropped_empty"]) == (30, 32, 1, 1)
    c = build_corpus_cache(streamed, _Tokenizer(), tmp_path / "c", max_samples=12, batch_size=5)
    assert c["rows_read"] == 12 and c["sample_ids"] == a["sample_ids"][:12]
    assert build_corpus_cache(eager, _Tokenizer(), tmp_path / "d", max_samples=1000)["rows_read"] == 32


def test_chitchat_loads_without_a_staging_file(tmp_path):
    rows = load_corpus_dataset({"source": "chitchat_dataset"}, tmp_path)
    assert len(rows) == 7168 and set(rows.column_names) == {"prompt_id", "messages"}
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_sha256_file_is_hashlib(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(np.arange(300_000, dtype=np.int64).tobytes())
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
