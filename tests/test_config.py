import copy
import subprocess
import sys

import pytest
import yaml
from jsonschema import Draft202012Validator

from newllm.config import ConfigError, check_config, load_schema, resolve_variant, section_defaults


@pytest.fixture(scope="module")
def schema(repo):
    return load_schema(repo / "config" / "schema.yaml")


@pytest.fixture()
def config(repo):
    return yaml.safe_load((repo / "config" / "config.yaml").read_text())


def _errors(schema, cfg):
    return [e.message for e in Draft202012Validator(schema).iter_errors(cfg)]


@pytest.mark.parametrize("name", ["config.yaml", "ultrachat_gpt2.yaml", "cpu_variants.yaml", "test.yaml"])
def test_shipped_configs_validate(repo, schema, name):
    cfg = yaml.safe_load((repo / "config" / name).read_text())
    assert _errors(schema, cfg) == []
    for variant in cfg["variants"]:
        resolve_variant(cfg, variant, schema)


def test_schema_rejects_unknown_keys_wrong_types_and_bad_dims(schema, config):
    bad = copy.deepcopy(config)
    bad["phase1"]["dist_reg_wieght"] = 0.5
    assert any("dist_reg_wieght" in m for m in _errors(schema, bad))
    bad = copy.deepcopy(config)
    bad["context_dims"] = [64, 0]
    assert any("0 is less than the minimum of 1" in m for m in _errors(schema, bad))
    bad = copy.deepcopy(config)
    bad["sample_sizes"] = "50"
    assert _errors(schema, bad)
    bad = copy.deepcopy(config)
    bad["embeddings"]["source"] = "glove"
    assert any("glove" in m for m in _errors(schema, bad))


def test_variant_overrides_are_checked_after_merging(schema, config):
    cfg = copy.deepcopy(config)
    cfg["variants"]["w05"] = {"phase1": {"dist_reg_weight": 0.5}}
    resolved = resolve_variant(cfg, "w05", schema)
    assert resolved["phase1"]["dist_reg_weight"] == 0.5
    assert resolved["phase1"]["max_iterations"] == config["phase1"]["max_iterations"]
    assert resolved["phase2"]["learning_rate"] == config["phase2"]["learning_rate"]  # the study's own value kept
    assert resolved["phase2"]["grad_clip"] == 1.0  # schema default filled in
    cfg["variants"]["bad"] = {"phase1": {"dist_reg_weight": 1.5}}
    with pytest.raises(ConfigError, match=r"variants.bad.phase1.dist_reg_weight: 1.5 is greater than the maximum of 1"):
        resolve_variant(cfg, "bad", schema)
    cfg["variants"]["typo"] = {"model": {"num_layer": 2}}
    with pytest.raises(ConfigError, match="num_layer"):
        resolve_variant(cfg, "typo", schema)
    with pytest.raises(ConfigError, match="variant 'nope' is not defined"):
        resolve_variant(cfg, "nope", schema)


def _filled(config):
    cfg = copy.deepcopy(config)
    cfg.setdefault("validation", {}).setdefault("num_samples", 40)
    return cfg


def test_sample_size_larger_than_pool(schema, config):
    cfg = _filled(config)
    cfg["sample_sizes"] = [50, 7200]
    with pytest.raises(ConfigError, match=r"sample_sizes \[7200\] exceed the training pool.*allowed: 1\.\.6048"):
        check_config(cfg, schema)


def test_missing_corpus_and_tokenizer(schema, config, tmp_path):
    cfg = _filled(config)
    cfg["corpus"] = {"name": "x", "source": "local", "path": str(tmp_path / "missing.jsonl")}
    with pytest.raises(ConfigError, match="missing.jsonl"):
        check_config(cfg, schema)
    cfg = _filled(config)
    cfg["tokenizer"] = str(tmp_path / "no-such-dir")
    with pytest.raises(ConfigError, match="no-such-dir"):
        check_config(cfg, schema)


def _dry_run(repo, tmp_path, overrides):
    cfg = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    cfg.update(overrides)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(path), "--directory", str(tmp_path)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"sample_sizes": [50, 100000]}, "exceed the training pool"),
        ({"context_dims": [-8]}, "-8 is less than the minimum of 1"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"corpus": {"name": "x", "source": "local", "path": "/nonexistent/c.jsonl"}}, "/nonexistent/c.jsonl"),
    ],
)
def test_bad_config_fails_at_dag_construction(repo, tmp_path, overrides, message):
    result = _dry_run(repo, tmp_path, overrides)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()  # no job started


@pytest.mark.parametrize("section,cls_path", [("phase1", "newllm.phase1.Phase1Config"), ("phase2", "newllm.phase2.Phase2Config")])
def test_trainer_dataclasses_are_the_schema_sections(schema, section, cls_path):
    # one source of defaults: the fields are the schema's properties, in order,
    # with its defaults and types; Phase1Config adds er_max_rows, which is no config key
    import dataclasses
    import importlib
    import typing

    from newllm.metrics import ER_MAX_ROWS

    module, name = cls_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    extra = {"er_max_rows": ER_MAX_ROWS} if section == "phase1" else {}
    assert list(fields.items()) == list(section_defaults(schema, section).items()) + list(extra.items())
    types = typing.get_type_hints(cls)  # the annotations, resolved where a module postpones them
    assert types["learning_rate"] is float and types["batch_size"] is int
    if section == "phase1":
        assert types["diversity"] is str and types["er_max_rows"] is int
    else:
        assert types["chunk_tokens"] == (int | None)
    assert cls.__module__ == module and cls.__name__ == name


def test_fields_module_by_hand():
    """The generated source declares each property with its type, default and description,
    in schema order, and is valid Python whose classes are those dataclasses."""
    import dataclasses

    from newllm.config import FieldSection, fields_module

    schema = {
        "$defs": {
            "s": {
                "properties": {
                    "steps": {"type": "integer", "default": 3, "description": "optimizer\n  steps"},
                    "rate": {"type": "number", "default": 0.5},
                    "mode": {"enum": ["a", "b"], "default": "a"},
                    "flag": {"type": "boolean", "default": False},
                    "chunk": {"type": ["integer", "null"], "default": None, "description": 'a "quoted" \\ word'},
                }
            }
        }
    }
    source = fields_module(schema, (FieldSection("$defs/s", "Settings", "docs/method.md §9"),))
    assert '    steps: int = 3\n    """optimizer steps"""\n' in source
    assert '    mode: str = "a"\n' in source and "    chunk: int | None = None\n" in source
    namespace = {}
    exec(compile(source, "<generated>", "exec"), namespace)
    settings = namespace["Settings"]
    assert [(f.name, f.type, f.default) for f in dataclasses.fields(settings)] == [
        ("steps", int, 3),
        ("rate", float, 0.5),
        ("mode", str, "a"),
        ("flag", bool, False),
        ("chunk", int | None, None),
    ]
    assert settings(steps=4) == settings(4, 0.5, "a", False, None)
    assert settings.__doc__ == "The ``s`` section's settings (docs/method.md §9)."

    props = schema["$defs"]["s"]["properties"]
    # a nested section, a subset of its keys, keyword-only and frozen
    nested = {"properties": {"outer": {"properties": {"inner": schema["$defs"]["s"]}}}}
    section = FieldSection("properties/outer/properties/inner", "Inner", "§1", keys=("rate", "flag"), kw_only=True, frozen=True)
    namespace = {}
    exec(compile(fields_module(nested, (section,)), "<generated>", "exec"), namespace)
    inner = namespace["Inner"]
    assert [f.name for f in dataclasses.fields(inner)] == ["rate", "flag"] and inner.__doc__.startswith("The ``outer.inner``")
    with pytest.raises(TypeError):
        inner(0.1)  # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        inner().rate = 1.0
    with pytest.raises(ConfigError, match=r"has no keys \['nope'\] for X"):
        fields_module(nested, (FieldSection(section.path, "X", "", keys=("nope",)),))
    with pytest.raises(ConfigError, match=r"no 'properties/missing'"):
        fields_module(nested, (FieldSection("properties/missing", "X", ""),))

    props = schema["$defs"]["s"]["properties"]
    plain = (FieldSection("$defs/s", "X", ""),)
    del props["steps"]["default"]
    with pytest.raises(ConfigError, match=r"s\.steps has no default"):
        fields_module(schema, plain)
    props["steps"] = {"type": ["integer", "number"], "default": 1}
    with pytest.raises(ConfigError, match=r"'steps': type \['integer', 'number'\] has no dataclass type"):
        fields_module(schema, plain)
    props["steps"] = {"type": "array", "default": []}
    with pytest.raises(ConfigError, match="'steps': type 'array'"):
        fields_module(schema, plain)


def _leaf_defaults(node):
    return {key: spec["default"] for key, spec in node["properties"].items() if "default" in spec and "properties" not in spec}


def test_every_settings_class_subclasses_the_fields_generated_from_its_section():
    from newllm import config_fields
    from newllm.baselines.training import NeuralTrainConfig
    from newllm.bigram import BigramConfig
    from newllm.config import FIELD_SECTIONS
    from newllm.model import ModelConfig
    from newllm.phase1 import Phase1Config
    from newllm.phase2 import Phase2Config
    from newllm.repetition import CONVERGED_LOSS, RepetitionConfig

    bases = {
        cls.__bases__[0].__name__
        for cls in (ModelConfig, Phase1Config, Phase2Config, NeuralTrainConfig, BigramConfig, RepetitionConfig)
    }
    assert bases == {section.name for section in FIELD_SECTIONS}
    assert all(getattr(config_fields, name).__module__ == "newllm.config_fields" for name in bases)
    assert ModelConfig(4, 3, num_layers=2).num_layers == 2 and CONVERGED_LOSS == RepetitionConfig().converged_loss
    with pytest.raises(TypeError):  # the section's fields are keyword-only after the per-run dimensions
        ModelConfig(4, 3, 2)


def test_schema_defaults_and_the_other_config_dataclasses_agree(schema):
    # model -> ModelConfig (generated fields plus two per-run dimensions); baselines.transformer ->
    # TransformerConfig (hand-written: its width is matched per run); repetition -> RepetitionConfig;
    # baselines.early_stopping + baselines.lstm -> NeuralTrainConfig (whose own defaults are the
    # LSTM's); embeddings.bigram -> BigramConfig is tested in test_embeddings.py
    import dataclasses

    import torch

    from newllm.baselines.models import SEQ_LEN_KEY, TransformerConfig
    from newllm.baselines.training import NeuralTrainConfig
    from newllm.model import ModelConfig
    from newllm.repetition import RepetitionConfig

    fields = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert (fields.pop("context_dim"), fields.pop("embed_dim")) == (dataclasses.MISSING,) * 2  # per run, no default
    assert fields == section_defaults(schema, "model")
    transformer = _leaf_defaults(schema["properties"]["baselines"]["properties"]["transformer"])
    fields = {f.name: f.default for f in dataclasses.fields(TransformerConfig)}
    required = ["width", "num_layers", "num_heads", "block_size"]  # width: matched to cvfp's parameters
    assert [k for k, v in fields.items() if v is dataclasses.MISSING] == required
    assert {k: v for k, v in fields.items() if k not in required} == {k: transformer[k] for k in ("dropout", "eval_stride")}
    repetition = _leaf_defaults(schema["properties"]["repetition"])
    fields = {f.name: f.default for f in dataclasses.fields(RepetitionConfig)}
    assert fields == {k: repetition[k] for k in fields}
    baselines = schema["properties"]["baselines"]["properties"]
    lstm = _leaf_defaults(baselines["early_stopping"]) | _leaf_defaults(baselines["lstm"])
    lstm["seq_len"] = lstm.pop(SEQ_LEN_KEY["lstm"])
    fields = {f.name: f.default for f in dataclasses.fields(NeuralTrainConfig)}
    assert baselines["chunk_tokens"]["default"] is None and fields.pop("chunk_tokens") is None  # null = per device
    assert NeuralTrainConfig.from_dict({}).chunk_tokens == 32
    assert NeuralTrainConfig.from_dict({}, torch.device("cuda")).chunk_tokens == 4096  # resolution only, no GPU used
    assert NeuralTrainConfig.from_dict({"chunk_tokens": 7}, torch.device("cuda")).chunk_tokens == 7
    assert fields == {k: lstm[k] for k in fields}
