"""Bad input gets a clear error naming the problem: broken local corpora (file, line and
field named, at DAG time and in the job), and rule scripts that fail with one line on
stderr and the traceback in the rule's log."""

import ast
import copy
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from newllm.config import ConfigError, check_config, load_schema
from newllm.corpus_check import NEEDED_SAMPLES, check_local_corpus
from newllm.data import DataError, check_disjoint
from newllm.pipeline import load_context_cache
from newllm.runtime import resolve_device


def test_a_held_out_set_overlapping_training_is_refused():
    check_disjoint(["a", "b"], ["c"])
    with pytest.raises(DataError, match=r"training set samples2 shares 1 samples with the test set \(e.g. \['b'\]\)"):
        check_disjoint(["a", "b"], ["b", "c"], "training set samples2", "the test set")


def test_truncated_context_cache_is_named(tmp_path):
    path = tmp_path / "train.npy"
    np.save(path, np.zeros((100, 1, 8), dtype=np.float32))
    assert load_context_cache(path, torch.device("cpu")).shape == (100, 1, 8)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="train.npy is unreadable or truncated"):
        load_context_cache(path, torch.device("cpu"))
    np.save(path, np.zeros((10, 8), dtype=np.float64))
    with pytest.raises(DataError, match="expected \\[n, L, d_c\\] float32"):
        load_context_cache(path, torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda():
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'tpu' is not one of"):
        resolve_device("tpu")


def _chat(i, text=None):
    return json.dumps({"prompt_id": f"c{i}", "messages": [{"role": "user", "content": text or f"hi {i}"}]})


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _local_config(repo, path, **corpus):
    """config/config.yaml with its corpus replaced by a local file, schema defaults filled in
    for the corpus section as Snakemake's validate() fills them."""
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    config["corpus"] = {"name": "mine", "source": "local", "path": str(path), "data_format": "json"}
    config["corpus"].update({"messages_field": "messages", "text_field": None, "id_field": "prompt_id", "max_samples": None})
    config["corpus"].update(corpus)
    return config


def test_empty_or_too_small_corpus(repo, tmp_path):
    schema = load_schema(repo / "config" / "schema.yaml")
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = copy.deepcopy(config)
    cfg["corpus"] = {"name": "empty", "source": "local", "path": str(empty)}
    with pytest.raises(ConfigError, match="empty.jsonl: 0 usable samples"):
        check_config(cfg, schema)
    small = _write(tmp_path / "small.jsonl", [_chat(i) for i in range(60)])
    cfg["corpus"] = {"name": "small", "source": "local", "path": str(small)}
    cfg["validation"] = {**cfg["validation"], "dev_samples": 10, "test_samples": 20, "embedding_samples": 10}
    needed = 10 + 20 + 10 + max(config["sample_sizes"])
    with pytest.raises(ConfigError, match=rf"small.jsonl: 60 usable samples in its rows .*the study needs at least {needed} "):
        check_config(cfg, schema)
    cfg["sample_sizes"], cfg["analysis"] = [5, 10, 15, 20], {"window_size": 4}  # 10 + 20 + 10 + 20 = 60: enough
    check_config(cfg, schema)


def test_too_few_usable_samples_counts_empty_and_duplicate_texts(tmp_path):
    lines = [_chat(i) for i in range(8)] + [_chat(8, "hi 0"), _chat(9, "  "), "", _chat(10, "hi 1")]
    corpus = _write(tmp_path / "few.jsonl", lines)
    cfg = {"data_format": "json", "messages_field": "messages"}
    with pytest.raises(DataError) as caught:
        check_local_corpus(corpus, cfg, 9)
    assert str(caught.value) == (
        f"corpus file {corpus}: 8 usable samples in its rows (11 rows; empty: 1, duplicates: 2); the study needs at "
        f"least 9 ({NEEDED_SAMPLES}): add samples, or lower sample_sizes or the validation sizes"
    )
    assert check_local_corpus(corpus, cfg, 8).usable == 8
    with pytest.raises(DataError, match=r"5 usable samples in the first 5 rows \(corpus.max_samples\)"):
        check_local_corpus(corpus, {**cfg, "max_samples": 5}, 6)


def test_a_malformed_json_line_is_named_with_its_line_number(repo, tmp_path):
    corpus = _write(tmp_path / "bad.jsonl", [_chat(0), _chat(1), '{"prompt_id": "c2", "messages": [', _chat(3)])
    expected = (
        f"corpus file {corpus}, line 3: not valid JSON (Expecting value at the end of the line); "
        "corpus.data_format json reads JSON lines: one object per line"
    )
    with pytest.raises(DataError) as caught:
        check_local_corpus(corpus, {"messages_field": "messages"})
    assert str(caught.value) == expected
    # at DAG time, and before datasets reads the file in the cache_corpus job
    with pytest.raises(ConfigError, match=re.escape(f"corpus: {expected}")):
        check_config(_local_config(repo, corpus), load_schema(repo / "config" / "schema.yaml"))
    # a line that parses but is no object, a JSON array instead of lines, bytes that are no UTF-8
    _write(corpus, [_chat(0), "[1, 2]"])
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: a JSON array where one object \(one sample\) belongs"):
        check_local_corpus(corpus, {})
    _write(corpus, ["[" + _chat(0) + "]"])
    with pytest.raises(DataError, match=r"bad.jsonl, line 1: a JSON array; .* no enclosing \[ \]"):
        check_local_corpus(corpus, {})
    corpus.write_bytes(_chat(0).encode() + b"\n\n" + b'{"a": "\xff"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 3: not UTF-8 text"):
        check_local_corpus(corpus, {})


def test_a_missing_field_is_named_with_the_file_and_the_setting(tmp_path):
    corpus = _write(tmp_path / "rows.jsonl", [_chat(0), json.dumps({"prompt_id": "c1", "text": "plain text"})])
    with pytest.raises(DataError) as caught:
        check_local_corpus(corpus, {"messages_field": "messages", "text_field": None})
    assert str(caught.value) == (
        f"corpus file {corpus}, line 2: no field 'messages' (corpus.messages_field); the row's fields: 'prompt_id', "
        "'text'. Set corpus.messages_field to the field that holds the messages, or corpus.text_field to a plain-text field"
    )
    with pytest.raises(DataError, match=r"rows.jsonl, line 1: no field 'text' \(corpus.text_field\)"):
        check_local_corpus(corpus, {"messages_field": "messages", "text_field": "text"})
    _write(corpus, [json.dumps({"prompt_id": "c0", "messages": None})])
    with pytest.raises(DataError, match=r"line 1: field 'messages' \(corpus.messages_field\) is null"):
        check_local_corpus(corpus, {"messages_field": "messages"})
    _write(corpus, [json.dumps({"prompt_id": "c0", "messages": "plain"})])
    with pytest.raises(DataError, match=r"line 1: field 'messages' \(corpus.messages_field\) is a string, not a list"):
        check_local_corpus(corpus, {"messages_field": "messages"})
    _write(corpus, [json.dumps({"prompt_id": "c0", "messages": [{"role": "user", "text": "hi"}]})])
    with pytest.raises(DataError, match=r"line 1: message 1 of field 'messages' \(corpus.messages_field\) has no 'content'"):
        check_local_corpus(corpus, {"messages_field": "messages"})


def test_csv_and_parquet_corpora_are_checked_too(tmp_path):
    cfg = {"data_format": "csv", "messages_field": "messages", "text_field": "text"}
    table = _write(tmp_path / "rows.csv", ["id,text", "1,hello", '2,"two, lines', 'of text"', "3,a,b"])
    with pytest.raises(DataError, match=r"rows.csv, line 5: 3 values but 2 columns in the header row"):
        check_local_corpus(table, cfg)
    _write(table, ["id,body", "1,hello"])
    with pytest.raises(DataError, match=r"rows.csv: no column 'text' \(corpus.text_field\); its columns: 'id', 'body'"):
        check_local_corpus(table, cfg)
    with pytest.raises(DataError, match=r"csv has no message lists .* set corpus.text_field"):
        check_local_corpus(table, {**cfg, "text_field": None})
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt_id": "a", "messages": [{"role": "user", "content": "x"}]}]), rows)
    assert check_local_corpus(rows, {"data_format": "parquet", "messages_field": "messages"}, 1).usable == 1
    with pytest.raises(DataError, match=r"rows.parquet: no column 'text' \(corpus.text_field\)"):
        check_local_corpus(rows, {"data_format": "parquet", "text_field": "text"})
    with pytest.raises(DataError, match=r"rows.csv is not a parquet file"):
        check_local_corpus(table, {"data_format": "parquet"})
    with pytest.raises(DataError, match=r"gone.jsonl does not exist"):
        check_local_corpus([rows, tmp_path / "gone.jsonl"], {"data_format": "parquet"})


def test_the_example_corpus_passes_the_check(repo):
    config = yaml.safe_load((repo / "config" / "example_local.yaml").read_text())
    count = check_local_corpus(repo / config["corpus"]["path"], {"messages_field": "messages", **config["corpus"]})
    assert count.usable == count.rows >= 150


# --------------------------------------------------------------------------- rule scripts
SCRIPT = """
import sys, types
from newllm.script import run_script

def main(smk):
    {body}

run_script(main, {{"snakemake": types.SimpleNamespace(log=[sys.argv[1]], rule="demo")}})
"""


def _run_script(tmp_path, body):
    log = tmp_path / "logs" / "demo.log"
    script = tmp_path / "demo.py"
    script.write_text(SCRIPT.format(body=body))
    result = subprocess.run([sys.executable, str(script), str(log)], capture_output=True, text=True, timeout=300)
    return result, log.read_text()


def test_an_expected_error_is_one_line_on_stderr_and_a_traceback_in_the_log(tmp_path):
    body = "from newllm.data import DataError; raise DataError('corpus file x.jsonl, line 3: not valid JSON')"
    result, log = _run_script(tmp_path, body)
    assert result.returncode == 1
    assert result.stderr == "error: corpus file x.jsonl, line 3: not valid JSON\n"
    assert "rule demo failed" in log and "Traceback (most recent call last)" in log
    assert "DataError: corpus file x.jsonl, line 3: not valid JSON" in log
    # every project error class counts, e.g. a subclass defined in another module
    result, log = _run_script(tmp_path, "from newllm.config import ConfigError; raise ConfigError('bad key')")
    assert (result.returncode, result.stderr) == (1, "error: bad key\n") and "ConfigError: bad key" in log


def test_an_unexpected_error_keeps_its_traceback_on_stderr(tmp_path):
    result, log = _run_script(tmp_path, "{}['missing']")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr and "KeyError: 'missing'" in result.stderr
    assert "error: " not in result.stderr.splitlines()[0]
    assert "rule demo failed" in log and "KeyError: 'missing'" in log


def test_every_rule_script_runs_through_run_script(repo):
    """A script that ran at module level would bypass the log and the one-line errors."""
    for script in sorted((repo / "workflow_scripts").glob("*.py")):
        tree = ast.parse(script.read_text())
        names = {
            n.id for stmt in tree.body if not isinstance(stmt, ast.FunctionDef) for n in ast.walk(stmt) if isinstance(n, ast.Name)
        }
        assert "snakemake" not in names, f"{script.name} reads snakemake at module level"
        assert "run_script(main, globals())" in script.read_text(), script.name


JOB = """
import runpy, sys, types
corpus = {{"name": "mine", "source": "local", "path": sys.argv[1], "data_format": "json", "messages_field": "messages",
          "text_field": None, "id_field": "prompt_id", "max_samples": None}}
smk = types.SimpleNamespace(
    input=types.SimpleNamespace(vocab="{out}/tokenizer/vocab.json", merges="{out}/tokenizer/merges.txt"),
    output=types.SimpleNamespace(manifest="{out}/corpus/manifest.json"),
    params=types.SimpleNamespace(corpus=corpus),
    log=["{out}/cache_corpus.log"],
    rule="cache_corpus",
)
runpy.run_path("workflow_scripts/cache_corpus.py", init_globals={{"snakemake": smk}}, run_name="__main__")
"""


def test_the_cache_corpus_job_names_a_bad_line_in_one_line_and_logs_the_traceback(repo, tmp_path):
    """A corpus that broke after the DAG check (it is skipped once a token cache exists)."""
    corpus = _write(tmp_path / "bad.jsonl", [_chat(0), '{"prompt_id": "c1", "messages": [}'])
    out = tmp_path / "out"
    code = JOB.format(out=out)
    result = subprocess.run([sys.executable, "-c", code, str(corpus)], cwd=repo, capture_output=True, text=True, timeout=300)
    message = f"corpus file {corpus}, line 2: not valid JSON (Expecting value at column 34)"
    assert result.returncode == 1 and result.stderr.startswith(f"error: {message}"), result.stderr[-3000:]
    assert len(result.stderr.splitlines()) == 1
    log = (out / "cache_corpus.log").read_text()
    assert "rule cache_corpus failed" in log and "Traceback" in log and message in log
