import json

import datasets
import numpy as np
import pytest

from newllm.data import (
    DataError,
    build_corpus_cache,
    check_disjoint,
    chitchat_json_path,
    chitchat_to_rows,
    count_source_samples,
    load_corpus_cache,
    load_corpus_dataset,
    read_stream,
    sample_ends,
    sample_text,
    split_samples,
    target_conversations,
    token_stream,
    validation_coverage,
    write_stream,
)
from newllm.io import read_json, sha256_file
from newllm.tokenizer import EOT_ID, VOCAB_SIZE, install_tokenizer_files, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    install_tokenizer_files("packaged", folder)
    return load_tokenizer(folder)


@pytest.fixture()
def local_jsonl(tmp_path):
    rows = [
        {"prompt_id": "a", "messages": [{"role": "user", "content": "Hello world"}, {"role": "assistant", "content": "Hi!"}]},
        {"prompt_id": "b", "messages": [{"role": "user", "content": "How are you?"}]},
        {"prompt_id": "c", "messages": [{"role": "user", "content": "Hello world"}, {"role": "assistant", "content": "Hi!"}]},
        {"prompt_id": "d", "messages": [{"role": "user", "content": "   "}]},
        {"prompt_id": "e", "messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_files_through_datasets_dedup_and_manifest(local_jsonl, tokenizer, tmp_path):
    # the same datasets.load_dataset path the hub source uses, on small local data
    dataset = load_corpus_dataset({"source": "local", "path": str(local_jsonl), "split": "train"}, tmp_path / "stage")
    manifest = build_corpus_cache(dataset, tokenizer, tmp_path / "cache")
    assert manifest["sample_ids"] == ["a", "b", "e"]
    assert manifest["dropped_duplicates"] == 1 and manifest["dropped_empty"] == 1
    tokens, offsets, _ = load_corpus_cache(tmp_path / "cache")
    first = tokens[offsets[0] : offsets[1]].tolist()
    assert first == tokenizer("Hello world\nHi!")["input_ids"]  # messages joined with "\n"
    assert tokens.dtype == np.uint16 and manifest["num_tokens"] == int(offsets[-1])


def test_corrupted_cache_is_detected(local_jsonl, tokenizer, tmp_path):
    dataset = load_corpus_dataset({"source": "local", "path": str(local_jsonl)}, tmp_path / "stage")
    build_corpus_cache(dataset, tokenizer, tmp_path / "cache")
    arr = np.load(tmp_path / "cache" / "tokens.npy")
    arr[0] += 1
    np.save(tmp_path / "cache" / "tokens.npy", arr)
    with pytest.raises(DataError, match="tokens.npy has SHA-256 .* corrupted or edited"):
        load_corpus_cache(tmp_path / "cache")


def test_a_cache_from_other_corpus_settings_is_refused(local_jsonl, tokenizer, tmp_path):
    corpus = {"source": "local", "path": str(local_jsonl), "max_samples": 3}
    dataset = load_corpus_dataset(corpus, tmp_path / "stage")
    build_corpus_cache(dataset, tokenizer, tmp_path / "cache", max_samples=3, extra_manifest={"corpus": corpus})
    assert load_corpus_cache(tmp_path / "cache", corpus=dict(corpus))[2]["corpus"] == corpus
    with pytest.raises(DataError, match=r"max_samples: 3 in the cache, 2 in the config.*--forcerun cache_corpus"):
        load_corpus_cache(tmp_path / "cache", corpus={**corpus, "max_samples": 2})
    with pytest.raises(DataError, match=r"split: None in the cache, 'train' in the config"):
        load_corpus_cache(tmp_path / "cache", corpus={**corpus, "split": "train"})


def test_missing_local_corpus_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl"):
        load_corpus_dataset({"source": "local", "path": str(tmp_path / "nope.jsonl")}, tmp_path)


def test_chitchat_rows_have_ultrachat_schema():
    rows = chitchat_to_rows(chitchat_json_path())
    assert len(rows) == 7168
    first = rows[0]
    assert set(first) == {"prompt_id", "messages"}
    assert first["messages"][0] == {"role": "user", "content": "Hello"}
    assert {m["role"] for r in rows[:50] for m in r["messages"]} == {"user", "assistant"}


def test_split_is_disjoint_nested_and_seeded():
    sizes = {"dev": 30, "test": 50, "embedding": 100}
    parts = split_samples(1000, sizes, seed=7)
    assert {k: len(v) for k, v in parts.items()} == {"dev": 30, "test": 50, "embedding": 100, "pool": 820}
    names = list(parts)
    for i, a in enumerate(names):  # dev, test, embedding slice and pool pairwise disjoint
        for b in names[i + 1 :]:
            assert set(parts[a]).isdisjoint(parts[b]), (a, b)
    assert len(set().union(*map(set, parts.values()))) == 1000
    again = split_samples(1000, sizes, seed=7)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = split_samples(1000, sizes, seed=8)
    assert not np.array_equal(parts["test"], other["test"])  # the split seed moves it
    pool = parts["pool"]
    # nested sizes: the training set of size N is the prefix of the pool, for every N
    for small, large in [(50, 100), (100, 400), (400, 820)]:
        assert set(pool[:small]) <= set(pool[:large])
    with pytest.raises(DataError, match="leave none for training"):
        split_samples(180, sizes, seed=0)
    with pytest.raises(DataError, match="test split size 0 must be >= 1"):
        split_samples(1000, {**sizes, "test": 0}, seed=0)


def test_sample_ends_and_target_conversations():
    # samples of 2, 1 and 3 tokens joined by EOT: [a a E b E c c c]
    ends = sample_ends([2, 1, 3])
    assert ends == [2, 4, 8]  # exclusive ends of each sample's own tokens; EOTs at 2 and 4
    # targets t = 0..6 predict positions 1..7: positions 1, 2 (the EOT) -> sample 0, 3, 4 -> 1, 5..7 -> 2
    assert target_conversations(ends, 8).tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_token_stream_separates_samples_with_eot(tmp_path):
    tokens = np.array([1, 2, 3, 4, 5, 6], dtype=np.uint16)
    offsets = np.array([0, 2, 3, 6])
    stream = token_stream(tokens, offsets, [2, 0])
    assert stream.tolist() == [4, 5, 6, EOT_ID, 1, 2]
    write_stream(tmp_path / "s.npy", stream, {"split": "x"})
    assert read_stream(tmp_path / "s.npy").tolist() == stream.tolist()


def test_validation_coverage_counts():
    train = np.array([1, 2, 3, 3])
    val = np.array([1, 4, 4, 5, 2])
    cov = validation_coverage(train, val)
    assert cov == {"validation_tokens": 5, "unseen_tokens": 3, "unseen_fraction": 0.6, "unseen_types": 2}


def test_split_is_the_seeded_permutation_cut_in_order_and_minimum_sizes_are_allowed():
    order = np.random.default_rng(3).permutation(20)
    parts = split_samples(20, {"dev": 1, "test": 2}, seed=3)  # no embedding slice: size 0
    assert parts["dev"].tolist() == order[:1].tolist() and parts["test"].tolist() == order[1:3].tolist()
    assert parts["embedding"].tolist() == [] and parts["pool"].tolist() == order[3:].tolist()
    assert all(v.dtype == np.int64 for v in parts.values())
    with_slice = split_samples(20, {"dev": 1, "test": 2, "embedding": 4}, seed=3)
    assert with_slice["embedding"].tolist() == order[3:7].tolist() and with_slice["pool"].tolist() == order[7:].tolist()
    assert split_samples(4, {"dev": 1, "test": 2, "embedding": 0}, seed=3)["pool"].size == 1  # one sample left suffices
    with pytest.raises(DataError, match="dev split size 0 must be >= 1"):
        split_samples(20, {"dev": 0, "test": 2}, seed=3)
    with pytest.raises(DataError, match="embedding split size -1"):
        split_samples(20, {"dev": 1, "test": 2, "embedding": -1}, seed=3)


def _write_jsonl(path, rows, blank_lines=0):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n" * blank_lines)
    return path


def _write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _chat(i, text):
    return {"prompt_id": f"p{i}", "messages": [{"role": "user", "content": text}]}


def test_chitchat_roles_follow_the_first_nonempty_sender_and_empty_utterances_are_dropped(tmp_path):
    raw = {
        "c1": {
            "messages": [
                [{"sender": "alice", "text": ""}, {"sender": "alice", "text": " Hi "}, {"sender": "alice"}],
                [{"sender": "bob", "text": "Hello"}, {"sender": "alice", "text": "Bye"}],
            ]
        },
        # bob's first utterance is blank, so carol (the first to say something) is the user
        "c2": {
            "messages": [
                [{"sender": "bob", "text": "   "}, {"sender": "carol", "text": "Yo"}],
                [{"sender": "bob", "text": "Hey"}],
            ]
        },
        "c3": {"messages": [[{"sender": "dan", "text": ""}]]},
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(raw))
    assert chitchat_to_rows(path) == [
        {
            "prompt_id": "c1",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
            ],
        },
        {"prompt_id": "c2", "messages": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hey"}]},
        {"prompt_id": "c3", "messages": []},
    ]
    assert chitchat_json_path().name == "dataset.json" and chitchat_json_path().is_file()


def test_count_source_samples_counts_rows_of_every_local_file(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", [_chat(i, "x") for i in range(3)], blank_lines=2)  # blank lines are no rows
    b = _write_jsonl(tmp_path / "b.jsonl", [_chat(i, "y") for i in range(2)])
    assert count_source_samples({"source": "local", "path": str(a)}) == 3  # json is the default format
    assert count_source_samples({"source": "local", "path": [str(a), str(b)], "data_format": "json"}) == 3 + 2
    p = _write_parquet(tmp_path / "p.parquet", [_chat(i, "z") for i in range(4)])
    q = _write_parquet(tmp_path / "q.parquet", [_chat(i, "w") for i in range(3)])
    assert count_source_samples({"source": "local", "path": [str(p), str(q)], "data_format": "parquet"}) == 4 + 3
    csv = tmp_path / "c.csv"
    csv.write_text("prompt_id,text\n1,a\n")
    assert count_source_samples({"source": "local", "path": str(csv), "data_format": "csv"}) is None  # unknown
    assert count_source_samples({"source": "hub", "path": "HuggingFaceH4/ultrachat_200k", "split": "train_sft"}) is None
    assert count_source_samples({"source": "chitchat_dataset"}) == 7168
    with pytest.raises(DataError, match="missing.jsonl"):
        count_source_samples({"source": "local", "path": [str(a), str(tmp_path / "missing.jsonl")]})


def test_local_corpus_formats_file_lists_splits_and_staging_cache(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", [_chat(0, "one"), _chat(1, "two")])
    b = _write_jsonl(tmp_path / "b.jsonl", [_chat(2, "three")])
    stage = tmp_path / "new" / "stage"  # parent folders are created
    both = load_corpus_dataset({"source": "local", "path": [str(a), str(b)]}, stage)
    assert isinstance(both, datasets.Dataset) and both["prompt_id"] == ["p0", "p1", "p2"]  # files in the given order
    # the datasets cache of local files stays in the staging folder (called again: it may exist)
    first_two = load_corpus_dataset({"source": "local", "path": str(a), "split": "train[:1]"}, stage)
    assert first_two["prompt_id"] == ["p0"]
    assert (stage / "hf_datasets_cache").is_dir() and any((stage / "hf_datasets_cache").iterdir())
    p = _write_parquet(tmp_path / "rows.parquet", [_chat(5, "five"), _chat(6, "six")])
    parquet = load_corpus_dataset({"source": "local", "path": str(p), "data_format": "parquet"}, stage)
    assert parquet["prompt_id"] == ["p5", "p6"]
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt_id,text\nq1,hello\nq2,bye\n")
    table = load_corpus_dataset({"source": "local", "path": str(csv), "data_format": "csv"}, stage)
    assert table["text"] == ["hello", "bye"]
    with pytest.raises(DataError, match="corpus.source 'ftp'"):
        load_corpus_dataset({"source": "ftp", "path": str(a)}, stage)


def test_hub_corpus_reads_the_retrieved_rows_offline_or_asks_datasets_for_the_split(tmp_path, monkeypatch):
    rows = _write_parquet(tmp_path / "rows.parquet", [_chat(7, "seven"), _chat(8, "eight")])
    corpus = {"source": "hub", "path": "HuggingFaceH4/ultrachat_200k", "split": "train_sft"}
    got = load_corpus_dataset(corpus, tmp_path / "stage", hub_rows=rows)
    assert got["prompt_id"] == ["p7", "p8"] and got[1]["messages"] == [{"role": "user", "content": "eight"}]
    assert any((tmp_path / "stage" / "hf_datasets_cache").iterdir())
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or "the split")
    assert load_corpus_dataset(corpus, tmp_path / "stage") == "the split"
    assert calls == [(("HuggingFaceH4/ultrachat_200k",), {"split": "train_sft"})]


def test_chitchat_source_is_the_converted_rows(tmp_path):
    dataset = load_corpus_dataset({"source": "chitchat_dataset"}, tmp_path)
    rows = chitchat_to_rows(chitchat_json_path())
    assert len(dataset) == len(rows) == 7168
    assert dataset[0] == rows[0] and dataset[-1] == rows[-1]


def test_sample_text_joins_message_contents_or_reads_the_text_field():
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 2}], "text": 17}
    assert sample_text(row) == "a\n2"
    assert sample_text(row, text_field="text") == "17"
    assert sample_text({"turns": [{"content": "x"}, {"content": "y"}]}, messages_field="turns") == "x\ny"


class _Progress:
    def __init__(self):
        self.total = 0

    def update(self, n):
        self.total += n


def test_cache_counts_drops_and_ids_across_batches(tokenizer, tmp_path):
    texts = ["Hello world", " ", "Hi!", "Hello world", "", "Bye", "Hi!", "Bye now"]
    dataset = datasets.Dataset.from_list([{"text": t, "n": i} for i, t in enumerate(texts)])  # no id column
    progress = _Progress()
    manifest = build_corpus_cache(
        dataset, tokenizer, tmp_path / "cache", text_field="text", batch_size=3, progress=progress, extra_manifest={"k": 1}
    )
    kept = ["Hello world", "Hi!", "Bye", "Bye now"]
    counts = [len(tokenizer(t)["input_ids"]) for t in kept]
    assert progress.total == 8
    # rows without an id are named by their row number in the source, across batches
    assert manifest["sample_ids"] == ["0", "2", "5", "7"]
    assert {k: manifest[k] for k in ("num_samples", "rows_read", "dropped_empty", "dropped_duplicates", "k")} == {
        "num_samples": 4,
        "rows_read": 8,
        "dropped_empty": 2,
        "dropped_duplicates": 2,
        "k": 1,
    }
    assert manifest["token_counts"] == counts and manifest["num_tokens"] == sum(counts)
    assert manifest == read_json(tmp_path / "cache" / "manifest.json")
    assert manifest["files"] == {
        "tokens.npy": sha256_file(tmp_path / "cache" / "tokens.npy"),
        "offsets.npy": sha256_file(tmp_path / "cache" / "offsets.npy"),
    }
    tokens, offsets, _ = load_corpus_cache(tmp_path / "cache")
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16  # training memory-maps the cache
    assert offsets.tolist() == np.cumsum([0, *counts]).tolist() and offsets.dtype == np.int64
    for k, text in enumerate(kept):
        assert tokens[offsets[k] : offsets[k + 1]].tolist() == tokenizer(text)["input_ids"]


def test_cache_max_samples_reads_the_first_rows_of_sized_and_streamed_datasets(tokenizer, tmp_path):
    rows = [{"id": f"r{i}", "messages": [{"content": f"sample {i}"}]} for i in range(5)]
    dataset = datasets.Dataset.from_list(rows)
    manifest = build_corpus_cache(dataset, tokenizer, tmp_path / "a", id_field="id", max_samples=3)
    assert manifest["sample_ids"] == ["r0", "r1", "r2"] and manifest["rows_read"] == 3
    assert build_corpus_cache(dataset, tokenizer, tmp_path / "b", id_field="id", max_samples=50)["rows_read"] == 5
    streamed = dataset.to_iterable_dataset()
    manifest = build_corpus_cache(streamed, tokenizer, tmp_path / "c", id_field="id", max_samples=2)
    assert manifest["sample_ids"] == ["r0", "r1"] and manifest["rows_read"] == 2


def test_cache_of_only_empty_samples_is_empty_but_valid(tokenizer, tmp_path):
    dataset = datasets.Dataset.from_list([{"prompt_id": "a", "messages": [{"content": "  "}]}])
    manifest = build_corpus_cache(dataset, tokenizer, tmp_path / "cache")
    assert (manifest["num_samples"], manifest["num_tokens"], manifest["dropped_empty"]) == (0, 0, 1)
    tokens, offsets, _ = load_corpus_cache(tmp_path / "cache")
    assert tokens.size == 0 and tokens.dtype == np.uint16 and offsets.tolist() == [0]


def test_a_missing_cache_file_is_named(local_jsonl, tokenizer, tmp_path):
    dataset = load_corpus_dataset({"source": "local", "path": str(local_jsonl)}, tmp_path / "stage")
    build_corpus_cache(dataset, tokenizer, tmp_path / "cache")
    (tmp_path / "cache" / "offsets.npy").unlink()
    with pytest.raises(DataError, match="offsets.npy is missing"):
        load_corpus_cache(tmp_path / "cache")


def test_sample_ends_are_integer_slice_bounds_for_any_count_dtype():
    stream = np.array([7, 7, EOT_ID, 8, EOT_ID, 9, 9, 9])
    ends = sample_ends(np.array([2, 1, 3], dtype=np.uint32))
    assert ends == [2, 4, 8] and all(isinstance(e, int) for e in ends)
    assert stream[: ends[1]].tolist() == [7, 7, EOT_ID, 8]  # the first two samples
    assert sample_ends([]) == [] and sample_ends([5]) == [5]


def test_token_stream_is_uint16_for_any_token_dtype_and_empty_without_samples():
    tokens = np.array([10, 11, 12, 13, 14], dtype=np.int64)
    offsets = np.array([0, 1, 3, 5])
    stream = token_stream(tokens, offsets, [1, 2, 0])
    assert stream.tolist() == [11, 12, EOT_ID, 13, 14, EOT_ID, 10] and stream.dtype == np.uint16
    assert token_stream(tokens, offsets, [2]).tolist() == [13, 14]  # no separator around a single sample
    empty = token_stream(tokens, offsets, [])
    assert empty.size == 0 and empty.dtype == np.uint16


def test_write_stream_manifest_and_read_stream_checks(tmp_path):
    stream = np.array([5, 6, EOT_ID, 7], dtype=np.int64)
    meta = write_stream(tmp_path / "train.npy", stream, {"split": "train", "num_samples": 2})
    on_disk = read_json(tmp_path / "train.json")
    assert (
        meta
        == on_disk
        == {
            "split": "train",
            "num_samples": 2,
            "num_tokens": 4,
            "sha256": sha256_file(tmp_path / "train.npy"),
        }
    )
    back = read_stream(tmp_path / "train.npy")
    assert isinstance(back, np.memmap) and back.dtype == np.uint16 and back.tolist() == [5, 6, EOT_ID, 7]
    assert write_stream(tmp_path / "empty.npy", np.zeros(0), {})["num_tokens"] == 0
    empty = read_stream(tmp_path / "empty.npy")  # no id to check: no error
    assert empty.size == 0 and empty.dtype == np.uint16
    write_stream(tmp_path / "bad.npy", np.array([1, VOCAB_SIZE]), {})  # one past the last GPT-2 id
    with pytest.raises(DataError, match=f"holds id {VOCAB_SIZE} >= vocab"):
        read_stream(tmp_path / "bad.npy")
    (tmp_path / "train.json").unlink()
    with pytest.raises(DataError, match="has no manifest"):
        read_stream(tmp_path / "train.npy")
    write_stream(tmp_path / "edited.npy", stream, {})
    np.save(tmp_path / "edited.npy", stream.astype(np.uint16)[::-1].copy())
    with pytest.raises(DataError, match="edited.npy has SHA-256"):
        read_stream(tmp_path / "edited.npy")


def test_check_disjoint_names_the_overlap():
    check_disjoint(["a", "b"], ["c", "d"])  # disjoint: no error
    check_disjoint([], ["c"])
    with pytest.raises(DataError, match=r"training set shares 2 samples with the held-out sets \(e\.g\. \['b', 'c'\]\)"):
        check_disjoint(["c", "a", "b"], ["b", "c", "d"])
    with pytest.raises(DataError, match=r"the dev set shares 1 samples with the test set"):
        check_disjoint(["x"], ["x"], "the dev set", "the test set")


def test_validation_coverage_edge_cases():
    # the last GPT-2 id counts like any other; uint16 streams as written to disk
    train = np.array([EOT_ID, 3], dtype=np.uint16)
    assert validation_coverage(train, np.array([EOT_ID, 3, 4, 4], dtype=np.uint16)) == {
        "validation_tokens": 4,
        "unseen_tokens": 2,
        "unseen_fraction": 0.5,
        "unseen_types": 1,
    }
    # an empty validation stream has nothing unseen; an empty training stream has seen nothing
    assert validation_coverage([1, 2], []) == {
        "validation_tokens": 0,
        "unseen_tokens": 0,
        "unseen_fraction": 0.0,
        "unseen_types": 0,
    }
    assert validation_coverage([], [1, 1, 2]) == {
        "validation_tokens": 3,
        "unseen_tokens": 3,
        "unseen_fraction": 1.0,
        "unseen_types": 2,
    }


def test_split_without_an_embedding_key_needs_only_one_training_sample():
    parts = split_samples(4, {"dev": 1, "test": 2}, seed=0)
    assert parts["pool"].size == 1 and parts["embedding"].size == 0
    with pytest.raises(DataError, match="leave none for training"):
        split_samples(3, {"dev": 1, "test": 2}, seed=0)


def test_a_missing_chitchat_package_is_reported_with_the_install_hint(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install chitchat-dataset"):
        chitchat_json_path()


def test_the_settings_error_names_only_the_keys_that_differ(local_jsonl, tokenizer, tmp_path):
    corpus = {"source": "local", "path": str(local_jsonl), "max_samples": 3}
    dataset = load_corpus_dataset(corpus, tmp_path / "stage")
    build_corpus_cache(dataset, tokenizer, tmp_path / "cache", extra_manifest={"corpus": corpus})
    with pytest.raises(DataError) as err:
        load_corpus_cache(tmp_path / "cache", corpus={**corpus, "max_samples": 4})
    assert "built from other corpus settings (max_samples: 3 in the cache, 4 in the config);" in str(err.value)


def test_a_missing_dev_size_is_refused():
    with pytest.raises(DataError, match="dev split size None must be >= 1"):
        split_samples(20, {"test": 2}, seed=0)
