"""config/README.md is generated from config/schema.yaml (newllm.schema_docs) and must not drift."""

from pathlib import Path

import pytest

import newllm.config_fields
from newllm.config import FIELDS_MODULE_PATH, SCHEMA_PATH, fields_module, load_schema
from newllm.schema_docs import README_PATH, STUDY_CONFIGS, schema_keys, schema_markdown

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMA_PATH)


def test_committed_page_is_the_generated_one(schema):
    """Editing the schema (or a study config's line) without regenerating fails here."""
    assert README_PATH == CONFIG_DIR / "README.md"
    committed = README_PATH.read_text()
    assert committed == schema_markdown(schema), (
        "config/README.md differs from config/schema.yaml: regenerate it with `python -m newllm.schema_docs`"
    )


def test_committed_settings_module_is_the_generated_one(schema):
    """newllm/config_fields.py (the trainers' settings classes) is generated from the schema too."""
    assert FIELDS_MODULE_PATH == Path(newllm.config_fields.__file__)
    assert FIELDS_MODULE_PATH.read_text() == fields_module(schema), (
        "newllm/config_fields.py differs from config/schema.yaml: regenerate it with `python -m newllm.schema_docs`"
    )


def test_every_schema_key_is_documented(schema):
    page = README_PATH.read_text()
    keys = schema_keys(schema)
    for name in ("study", "corpus.source", "phase2.learning_rate", "embeddings.bigram.lr", "baselines.transformer.block_size"):
        assert name in keys
    missing = [key for key in keys if f"`{key}`" not in page]
    assert not missing, missing


def test_every_leaf_key_has_a_table_row_with_its_default(schema):
    """Each key with a default shows it in its row; $refs into $defs are followed."""
    page = schema_markdown(schema)
    row = next(line for line in page.splitlines() if line.startswith("| `phase1.dist_reg_weight` |"))
    default = schema["$defs"]["phase1"]["properties"]["dist_reg_weight"]["default"]
    assert f"| `{default}` |" in row
    row = next(line for line in page.splitlines() if line.startswith("| `device` |"))
    assert "\\|" in row  # the pattern's pipes are escaped, so the table keeps its columns
    assert len(row.replace("\\|", "").split("|")) == 7


def test_every_study_config_is_listed():
    """A new config/*.yaml needs its line in newllm.schema_docs.STUDY_CONFIGS."""
    present = {p.name for p in CONFIG_DIR.glob("*.yaml")} - {"schema.yaml"}
    assert present - set(STUDY_CONFIGS) == set()


def test_rendering_of_a_small_schema():
    schema = {
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "description": "the  name\n of it"},
            "level": {"enum": [1, 2], "default": 1},
            "section": {"$ref": "#/$defs/section"},
        },
        "$defs": {
            "section": {
                "type": "object",
                "description": "a section",
                "properties": {
                    "rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.5},
                    "mode": {"oneOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}], "default": "auto"},
                    "inner": {"type": "object", "properties": {"flag": {"type": ["boolean", "null"], "default": None}}},
                },
            }
        },
    }
    page = schema_markdown(schema, configs={"a.yaml": "study a"})
    assert "| [`a.yaml`](a.yaml) | study a |" in page
    assert "| `name` | string | required |  | the name of it |" in page
    assert "| `level` | integer | `1` | `1`, `2` |  |" in page
    assert "## `section`\n\na section\n" in page
    assert "| `section.rate` | number | `0.5` | 0 < x ≤ 1 |  |" in page
    assert "| `section.mode` | string or integer | `auto` | `auto` or integer, ≥ 1 |  |" in page
    assert "| `section.inner.flag` | boolean or null | `null` |  |  |" in page
    assert schema_keys(schema) == [
        "name",
        "level",
        "section",
        "section.rate",
        "section.mode",
        "section.inner",
        "section.inner.flag",
    ]
