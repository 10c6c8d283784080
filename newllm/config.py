"""Config checks beyond the JSON schema, run at DAG-construction time.  No torch import.

``config/schema.yaml`` (JSON Schema Draft 2020-12) checks keys and types; this module
checks what a schema cannot: that variant overrides are valid after merging, that the
corpus exists and holds enough samples for every requested size, and that min/max
settings are ordered.  Every error names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from newllm.corpus_check import check_local_corpus
from newllm.data import DataError, count_source_samples
from newllm.io import read_json
from newllm.study import CATALOGUE, get_model

SECTIONS = ("model", "phase1", "phase2")

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.yaml"
"""The study config's JSON schema: the one source of every default."""

_JSON_TYPES: dict[str, type] = {"integer": int, "number": float, "string": str, "boolean": bool}


class ConfigError(ValueError):
    """An invalid configuration; raised before any job starts."""


def load_schema(path: str | Path) -> dict[str, Any]:
    """Read the YAML schema."""
    return yaml.safe_load(Path(path).read_text())


def _field_type(key: str, spec: dict[str, Any]) -> Any:
    """The Python type of a schema property: its JSON ``type`` (a ``[t, "null"]`` list
    gives ``t | None``) or the one type of its ``enum`` values."""
    if "enum" in spec:
        types = {type(v) for v in spec["enum"]}
        if len(types) == 1:
            return types.pop()
    names = spec.get("type")
    names = [names] if isinstance(names, str) else list(names or [])
    known = [_JSON_TYPES[n] for n in names if n in _JSON_TYPES]
    if len(known) != 1 or not set(names) <= {*_JSON_TYPES, "null"}:
        raise ConfigError(
            f"schema property {key!r}: type {spec.get('type')!r} has no dataclass type; "
            f"allowed: one of {sorted(_JSON_TYPES)}, optionally with 'null'"
        )
    return known[0] | None if "null" in names else known[0]


@dataclass(frozen=True)
class FieldSection:
    """One schema section generated into :mod:`newllm.config_fields` as a dataclass.

    Attributes:
        path: where the section's object sits in the schema, as ``/``-separated keys
            (``$defs/phase1``, ``properties/embeddings/properties/bigram``).
        name: the dataclass's name.
        source: what the class's docstring points to (a ``docs/method.md`` section).
        keys: the properties that become fields, in schema order; ``None`` = all of them.
        kw_only: fields are keyword-only, so a subclass may add fields without defaults
            before them (``ModelConfig``'s ``context_dim`` and ``embed_dim``).
        frozen: a frozen dataclass (a frozen subclass needs a frozen base).
    """

    path: str
    name: str
    source: str
    keys: tuple[str, ...] | None = None
    kw_only: bool = False
    frozen: bool = False

    @property
    def title(self) -> str:
        """The section as a config reader writes it (``embeddings.bigram``)."""
        return ".".join(part for part in self.path.split("/") if part not in ("$defs", "properties"))

    def properties(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The section's ``{key: property schema}`` that become fields.

        Raises:
            ConfigError: the path or one of ``keys`` is not in the schema.
        """
        node = schema
        for part in self.path.split("/"):
            if part not in node:
                raise ConfigError(f"schema has no {self.path!r} (at {part!r}) for {self.name}")
            node = node[part]
        props = node["properties"]
        missing = sorted(set(self.keys or ()) - set(props))
        if missing:
            raise ConfigError(f"schema section {self.title} has no keys {missing} for {self.name}")
        return {key: spec for key, spec in props.items() if self.keys is None or key in self.keys}


FIELD_SECTIONS: tuple[FieldSection, ...] = (
    FieldSection("$defs/model", "ModelFields", "docs/method.md §3", kw_only=True, frozen=True),
    FieldSection("$defs/phase1", "Phase1Fields", "docs/method.md §4"),
    FieldSection("$defs/phase2", "Phase2Fields", "docs/method.md §7"),
    FieldSection("properties/baselines/properties/early_stopping", "EarlyStoppingFields", "docs/method.md §10"),
    FieldSection("properties/embeddings/properties/bigram", "BigramFields", "docs/method.md §2"),
    FieldSection(
        "properties/repetition",
        "RepetitionFields",
        "docs/method.md §9",
        keys=("repetitions", "learning_rate", "grad_clip", "ce_weight", "converged_loss", "collapse_threshold"),
    ),
)
"""The schema sections generated into :mod:`newllm.config_fields`; the trainers' config
classes subclass them (``ModelConfig``, ``Phase1Config``, ``Phase2Config``,
``NeuralTrainConfig``, ``BigramConfig``, ``RepetitionConfig``)."""

FIELDS_MODULE_PATH = Path(__file__).resolve().parent / "config_fields.py"
"""Where ``python -m newllm.schema_docs`` writes :func:`fields_module`'s text."""


def _literal(value: Any) -> str:
    """A default as Python source in ruff's format (double-quoted strings)."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def fields_module(schema: dict[str, Any], sections: tuple[FieldSection, ...] | None = None) -> str:
    """The source of :mod:`newllm.config_fields`: one dataclass per section of
    ``sections`` (default :data:`FIELD_SECTIONS`) whose fields are the section's
    properties — names, types, defaults and descriptions, in schema order — written out
    so readers, IDEs and type checkers see them, while the schema stays their one source
    (``tests/test_config_docs.py`` fails when the committed module differs).  The trainers'
    config classes subclass these (pypsa-eur derives its config defaults from one model
    the same way).

    Raises:
        ConfigError: a section or key missing from the schema, a property without a
        ``default``, or with a type that maps to no single Python type.
    """
    sections = FIELD_SECTIONS if sections is None else sections
    out = [
        '"""Trainer settings generated from ``newllm/schema.yaml``: one dataclass per section, its fields',
        "the section's keys with their types, defaults and descriptions.",
        "",
        "Generated by ``python -m newllm.schema_docs``; do not edit by hand (tests/test_config_docs.py",
        "fails when this module and the schema disagree).  No torch import.",
        '"""',
        "",
        "from dataclasses import dataclass",
    ]
    for section in sections:
        options = ", ".join(name + "=True" for name in ("frozen", "kw_only") if getattr(section, name))
        decorator = f"@dataclass({options})" if options else "@dataclass"
        doc = f'    """The ``{section.title}`` section\'s settings ({section.source})."""'
        out += ["", "", decorator, f"class {section.name}:", doc, ""]
        for key, spec in section.properties(schema).items():
            if "default" not in spec:
                raise ConfigError(f"schema property {section.title}.{key} has no default; every trainer setting needs one")
            typ = _field_type(key, spec)
            text = " ".join(spec.get("description", "(no description)").split())
            text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
            lines = textwrap.wrap(f'"""{text}"""', width=122)
            out += (
                [f"    {key}: {getattr(typ, '__name__', typ)} = {_literal(spec['default'])}"]
                + ["    " + line for line in lines]
                + [""]
            )
        out.pop()
    return "\n".join(out) + "\n"


def section_defaults(schema: dict[str, Any], section: str) -> dict[str, Any]:
    """The schema's ``default`` of every key of a ``$defs`` section (model/phase1/phase2)."""
    props = schema["$defs"][section]["properties"]
    return {key: copy.deepcopy(spec["default"]) for key, spec in props.items() if "default" in spec}


def resolve_variant(config: dict[str, Any], variant: str, schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Merge a variant's overrides into the study's model/phase1/phase2 sections.

    Returns:
        ``{"model": {...}, "phase1": {...}, "phase2": {...}}``, complete and validated.

    Raises:
        ConfigError: unknown variant, or an override that breaks the section's schema.
    """
    variants = config.get("variants", {})
    if variant not in variants:
        raise ConfigError(f"variant {variant!r} is not defined; defined variants: {sorted(variants)}")
    resolved = {}
    for section in SECTIONS:
        merged = section_defaults(schema, section)
        merged.update(copy.deepcopy(config.get(section) or {}))
        merged.update(variants[variant].get(section, {}) or {})
        sub_schema = {**schema["$defs"][section], "$defs": schema["$defs"]}
        errors = sorted(jsonschema.Draft202012Validator(sub_schema).iter_errors(merged), key=str)
        if errors:
            err = errors[0]
            where = ".".join(str(p) for p in err.absolute_path)
            raise ConfigError(f"variants.{variant}.{section}{'.' + where if where else ''}: {err.message}")
        resolved[section] = merged
    p2 = resolved["phase2"]
    if p2["min_steps"] > p2["max_steps"]:
        raise ConfigError(f"variant {variant!r}: phase2.min_steps={p2['min_steps']} exceeds phase2.max_steps={p2['max_steps']}")
    p1 = resolved["phase1"]
    if p1.get("min_iterations", 5) > p1.get("max_iterations", 60):
        raise ConfigError(
            f"variant {variant!r}: phase1.min_iterations={p1['min_iterations']} exceeds "
            f"phase1.max_iterations={p1['max_iterations']}"
        )
    return resolved


def available_training_samples(config: dict[str, Any], corpus_manifest: str | Path | None = None) -> int | None:
    """Samples left for training after validation: exact from an existing corpus cache,
    else a cheap count of the source (before deduplication), ``None`` when unknown (hub).

    Raises:
        ConfigError: the corpus source is missing.
    """
    corpus = config["corpus"]
    if corpus_manifest is not None and Path(corpus_manifest).is_file():
        total = read_json(corpus_manifest)["num_samples"]
    else:
        try:
            total = count_source_samples(corpus)
        except DataError as err:
            raise ConfigError(f"corpus: {err}") from err
        if total is None:
            return None
        if corpus.get("max_samples"):
            total = min(total, corpus["max_samples"])
    return total - heldout_samples(config)


def heldout_samples(config: dict[str, Any]) -> int:
    """Conversations taken out before the training pool: dev + test + embedding slice."""
    val = config["validation"]
    return int(val["dev_samples"]) + int(val["test_samples"]) + int(val["embedding_samples"])


def check_config(config: dict[str, Any], schema: dict[str, Any], corpus_manifest: str | Path | None = None) -> None:
    """All semantic checks of a schema-validated config.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    unknown = [m for m in config["models"] if m not in CATALOGUE]
    if unknown:
        raise ConfigError(f"models {unknown} are not registered; allowed: {', '.join(CATALOGUE)} (newllm/study.py)")
    for model in config["models"]:
        partner = get_model(model).pairs_with
        if partner is not None and partner not in config["models"]:
            raise ConfigError(f"model {model!r} reads the runs of {partner!r}; add {partner!r} to models")
    corpus = config["corpus"]
    if corpus["source"] in ("hub", "local") and not corpus.get("path"):
        raise ConfigError(f"corpus.path is required for corpus.source {corpus['source']!r}")
    if corpus["source"] == "local" and not (corpus_manifest is not None and Path(corpus_manifest).is_file()):
        try:  # every row, until the token cache exists: a bad line is named before any job starts
            check_local_corpus(corpus["path"], corpus, heldout_samples(config) + max(config["sample_sizes"], default=1))
        except DataError as err:
            raise ConfigError(f"corpus: {err}") from err
    for variant in config["variants"]:
        resolve_variant(config, variant, schema)
    available = available_training_samples(config, corpus_manifest)
    if available is not None:
        too_big = [n for n in config["sample_sizes"] if n > available]
        if available < 1 or too_big:
            raise ConfigError(
                f"sample_sizes {too_big or config['sample_sizes']} exceed the training pool: corpus "
                f"{corpus['name']!r} leaves {max(available, 0)} samples after "
                f"{heldout_samples(config)} held-out samples (validation.dev_samples + test_samples + "
                f"embedding_samples); allowed: 1..{max(available, 0)}"
            )
    window_spec = schema["properties"]["analysis"]["properties"]["window_size"]
    window = config.get("analysis", {}).get("window_size", window_spec["default"])
    if window > len(config["sample_sizes"]):
        raise ConfigError(
            f"analysis.window_size={window} exceeds the {len(config['sample_sizes'])} sample_sizes; "
            f"allowed: {window_spec['minimum']}..{len(config['sample_sizes'])}"
        )
    trained_embeddings = config.get("embeddings", {}).get("source", "word2vec") not in ("gpt2", "random")
    if trained_embeddings and config["validation"]["embedding_samples"] < 1:
        raise ConfigError(
            f"embeddings.source {config['embeddings']['source']!r} is trained on the embedding slice, but "
            "validation.embedding_samples is 0; allowed: >= 1 (or embeddings.source gpt2/random)"
        )
    tok = config["tokenizer"]
    if tok != "packaged" and not tok.startswith("hub:") and not Path(tok).is_dir():
        raise ConfigError(f"tokenizer {tok!r} is not 'packaged', 'hub:<repo id>' or an existing directory")
