"""``config/README.md`` (and :mod:`newllm.config_fields`), generated from ``config/schema.yaml``.  No torch import.

The schema documents and defaults every configuration key (Snakemake fills the
defaults in); this module renders it as Markdown so the page a user reads cannot drift
from what :func:`snakemake.utils.validate` enforces: one table per top-level section,
one row per key (nested keys dotted, ``phase2.learning_rate``) with its type, default,
allowed values or range and description, after a short hand-written introduction that
lists the study configs in ``config/``.  ``tests/test_config_docs.py`` fails when the
committed page differs from what this module generates.

Regenerate after editing the schema or a study config's entry in :data:`STUDY_CONFIGS`::

    python -m newllm.schema_docs
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from newllm.config import FIELD_SECTIONS, FIELDS_MODULE_PATH, SCHEMA_PATH, fields_module, load_schema

README_PATH = Path(__file__).resolve().parents[1] / "config" / "README.md"
"""Where :func:`main` writes the page (``config/README.md``)."""

STUDY_CONFIGS: dict[str, str] = {
    "config.yaml": (
        "the default study and the base every other config is layered over: the embedded "
        "offline corpus (PyPI `chitchat-dataset`, real human chat) with GPT-2's tokenizer, "
        "CPU-sized, every model of the study on the same tokens (`snakemake --cores all`)"
    ),
    "chitchat_full.yaml": (
        "the full study on the embedded corpus: nested training sizes over nearly three decades "
        "of training tokens, context_dim 32 / 64 / 128, every model of the catalogue, three "
        "training seeds; meant for a cluster (`--profile profiles/slurm`) or a long local run"
    ),
    "cpu_variants.yaml": (
        "the comparisons of the original research at CPU size on the embedded corpus: "
        "context_dim, one vs two input tokens, MCDL vs ODCM diversity, two `dist_reg_weight`s, "
        "one vs two layers and the Phase 1 stop rule, over three training seeds"
    ),
    "ultrachat_gpt2.yaml": (
        "the original research setup: UltraChat 200k, GPT-2's tokenizer and pretrained token "
        "embeddings, context_dim 768 / 1200 / 1537 and one vs two input tokens; needs the "
        "Hugging Face hub (or a filled cache) and a GPU"
    ),
    "test.yaml": "a tiny study for the end-to-end tests: the real DAG on a few hundred conversations, seconds per job",
    "example_local.yaml": (
        "a worked example of a study on your own corpus: a local JSON-lines file of "
        "conversations (`tests/data/example_corpus.jsonl`)"
    ),
}
"""The study configs in ``config/`` (file name -> one line on what it runs), in the order
the page lists them.  A test checks that every ``config/*.yaml`` but the schema is here."""

INTRO = """\
# Configuration

<!-- Generated from config/schema.yaml by `python -m newllm.schema_docs`; do not edit by hand:
     tests/test_config_docs.py fails when this page and the schema disagree. -->

A study is one YAML file of experiment metadata: which corpus, which training sizes and
context dimensions, which models, and their hyper-parameters.  Runtime settings (threads,
executors, partitions) belong in `profiles/`, not here.

- `config/config.yaml` is read first; a study given with `--configfile` is layered over it
  (nested keys merge, lists and scalars replace), so it needs only what differs.
- `config/schema.yaml` (JSON Schema Draft 2020-12) documents every key and its default;
  Snakemake fills the defaults in and refuses unknown keys and wrong types before any job
  starts, naming the key and what is allowed.  `newllm/config.py` adds the checks a schema
  cannot make (variant overrides after merging, sample sizes against the training pool,
  the corpus and tokenizer paths).
- The sections {field_sections}
  are also the trainers' settings: `newllm/config_fields.py` is generated from them
  (`python -m newllm.schema_docs` writes it and this page), and the settings classes
  subclass it, so the defaults below are the trainers' defaults.
- What each setting does in the method: [`docs/method.md`](../docs/method.md).

## Study configs

| file | what it runs |
|---|---|
"""


# ----------------------------------------------------------------------------- rendering
def _resolve(spec: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with a local ``$ref`` (``#/$defs/<name>``) replaced by its target, the
    referring object's own keys winning."""
    ref = spec.get("$ref")
    if not ref:
        return spec
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs are rendered, got {ref!r}")
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in spec.items() if k != "$ref"}}


def _value(value: Any) -> str:
    """A schema value as inline code: YAML spellings for booleans and null, JSON otherwise."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {_plain(v)}" for k, v in value.items()) + "}"
    else:
        text = _plain(value)
    return f"`{text}`"


def _plain(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_plain(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _type(spec: dict[str, Any], root: dict[str, Any]) -> str:
    """The type column: JSON types (``integer or null``), ``list of …`` for arrays, the
    alternatives of a ``oneOf``."""
    spec = _resolve(spec, root)
    if "oneOf" in spec:
        return " or ".join(_type(alt, root) for alt in spec["oneOf"])
    if "const" in spec:
        return _json_type(spec["const"])
    names = spec.get("type")
    if names is None and "enum" in spec:
        kinds = sorted({_json_type(v) for v in spec["enum"]})
        return " or ".join(kinds)
    names = [names] if isinstance(names, str) else list(names or [])
    if not names:
        return "any"
    words = []
    for name in names:
        if name == "array":
            items = spec.get("items")
            words.append(f"list of {_type(items, root)}" if items else "list")
        else:
            words.append(name)
    return " or ".join(words)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def _allowed(spec: dict[str, Any], root: dict[str, Any]) -> str:
    """The allowed-values column: enum values, constants, ranges, patterns, list sizes."""
    spec = _resolve(spec, root)
    if "oneOf" in spec:
        return " or ".join(_alternative(alt, root) for alt in spec["oneOf"])
    parts: list[str] = []
    if "const" in spec:
        parts.append(_value(spec["const"]))
    if "enum" in spec:
        parts.append(", ".join(_value(v) for v in spec["enum"]))
    low, high = _bound(spec, "minimum", "exclusiveMinimum"), _bound(spec, "maximum", "exclusiveMaximum")
    if low and high:
        parts.append(f"{low[1]} {'≤' if low[0] else '<'} x {'≤' if high[0] else '<'} {high[1]}")
    elif low:
        parts.append(f"{'≥' if low[0] else '>'} {low[1]}")
    elif high:
        parts.append(f"{'≤' if high[0] else '<'} {high[1]}")
    if "pattern" in spec:
        parts.append(f"matches {_value(spec['pattern'])}")
    if spec.get("type") == "array" or "items" in spec:
        items = spec.get("items")
        inner = _allowed(items, root) if items else ""
        if inner:
            parts.append(f"each {inner}")
        if "minItems" in spec:
            parts.append(f"at least {spec['minItems']} item{'s' if spec['minItems'] != 1 else ''}")
        if spec.get("uniqueItems"):
            parts.append("no repeats")
    if "minProperties" in spec:
        parts.append(f"at least {spec['minProperties']} entr{'ies' if spec['minProperties'] != 1 else 'y'}")
    if "propertyNames" in spec and "pattern" in spec["propertyNames"]:
        parts.append(f"names match {_value(spec['propertyNames']['pattern'])}")
    return "; ".join(parts)


def _alternative(spec: dict[str, Any], root: dict[str, Any]) -> str:
    """One ``oneOf`` alternative: a constant as itself, else its type and its constraints."""
    spec = _resolve(spec, root)
    allowed = _allowed(spec, root)
    if "const" in spec:
        return allowed
    return f"{_type(spec, root)}, {allowed}" if allowed else _type(spec, root)


def _bound(spec: dict[str, Any], inclusive: str, exclusive: str) -> tuple[bool, str] | None:
    """``(inclusive?, value)`` of a lower or upper bound, or ``None``."""
    if inclusive in spec:
        return True, _plain(spec[inclusive])
    if exclusive in spec:
        return False, _plain(spec[exclusive])
    return None


def _default(spec: dict[str, Any], required: bool) -> str:
    if "default" in spec:
        return _value(spec["default"])
    return "required" if required else "—"


def _description(spec: dict[str, Any]) -> str:
    return " ".join(str(spec.get("description", "")).split())


def _cell(text: str) -> str:
    """Table-safe: pipes escaped (also inside code spans, as GitHub's tables need)."""
    return text.replace("|", "\\|")


def _rows(name: str, spec: dict[str, Any], root: dict[str, Any], required: bool) -> Iterator[tuple[str, ...]]:
    """``(key, type, default, allowed, description)`` for ``name`` and every key below it."""
    spec = _resolve(spec, root)
    yield (f"`{name}`", _type(spec, root), _default(spec, required), _allowed(spec, root), _description(spec))
    yield from _children(name, spec, root)


def _children(name: str, spec: dict[str, Any], root: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    """Rows of an object's properties (``name.key``) and of its free-form entries
    (``name.<name>``, from an ``additionalProperties`` schema)."""
    needed = set(spec.get("required", []))
    for key, sub in (spec.get("properties") or {}).items():
        yield from _rows(f"{name}.{key}", sub, root, key in needed)
    extra = spec.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _rows(f"{name}.<name>", extra, root, False)


def _table(rows: list[tuple[str, ...]]) -> str:
    lines = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def schema_keys(schema: dict[str, Any]) -> list[str]:
    """Every key the page documents, dotted (``phase2.learning_rate``), in page order;
    free-form entries (the variant names) as ``<name>``."""
    keys = []
    for key, spec in schema["properties"].items():
        keys += [row[0].strip("`") for row in _rows(key, spec, schema, False)]
    return keys


def schema_markdown(schema: dict[str, Any], configs: dict[str, str] | None = None) -> str:
    """The whole ``config/README.md``: the introduction with the study configs
    (``configs``, default :data:`STUDY_CONFIGS`), then one table of keys per top-level
    section of ``schema`` — the top-level scalar and list keys together under "Study",
    each object section (``corpus``, ``phase1``, …) under its own heading with its
    description.

    Args:
        schema: the parsed ``config/schema.yaml`` (:func:`newllm.config.load_schema`);
            local ``$ref``s into ``$defs`` are followed.

    Returns:
        Markdown ending in one newline.
    """
    configs = STUDY_CONFIGS if configs is None else configs
    titles = [f"`{section.title}`" for section in FIELD_SECTIONS]
    parts = [INTRO.replace("{field_sections}", ", ".join(titles[:-1]) + " and " + titles[-1])]
    parts.append("".join(f"| [`{name}`]({name}) | {_cell(text)} |\n" for name, text in configs.items()))
    required = set(schema.get("required", []))
    top = {k: _resolve(v, schema) for k, v in schema["properties"].items()}
    scalars = [k for k, v in top.items() if v.get("type") != "object"]
    parts.append("\n## Study\n\nThe top-level keys; the sections below hold the rest.\n\n")
    parts.append(_table([row for k in scalars for row in _rows(k, top[k], schema, k in required)]))
    for key, spec in top.items():
        if key in scalars:
            continue
        parts.append(f"\n## `{key}`\n\n")
        description = _description(spec)
        if description:
            parts.append(description + "\n\n")
        if spec.get("default") not in (None, {}):
            parts.append(f"Default: {_value(spec['default'])}.\n\n")
        allowed = _allowed(spec, schema)
        if allowed:
            parts.append(f"Allowed: {allowed}.\n\n")
        rows = list(_children(key, spec, schema))
        parts.append(_table(rows) if rows else "No keys.\n")
    return "".join(parts)


def main(path: str | Path = README_PATH, fields_path: str | Path = FIELDS_MODULE_PATH) -> list[Path]:
    """Write everything generated from ``config/schema.yaml``: :func:`schema_markdown` to
    ``path`` and :func:`newllm.config.fields_module` (the trainers' settings classes) to
    ``fields_path``; returns both paths."""
    schema = load_schema(SCHEMA_PATH)
    written = []
    for target, text in ((path, schema_markdown(schema)), (fields_path, fields_module(schema))):
        Path(target).write_text(text)
        written.append(Path(target))
    return written


if __name__ == "__main__":
    for written in main():
        print(f"wrote {written}")
