"""What a result was made from: code hashes per rule and each study's data provenance.

Used at DAG-construction time by ``rules/common.smk``, so no torch import here.

* :func:`code_hash` — a hash of the code of the ``newllm`` modules a rule's workflow
  script imports (its static import closure): their syntax trees without docstrings,
  comments or layout.  Every rule passes it as ``params: code=...``, so Snakemake's
  ``params`` rerun trigger reruns exactly the jobs whose package code changed; editing a
  docstring or a comment, reformatting, or a ``git checkout`` that only touches files
  reruns nothing.  The checkpoint fingerprint includes it too (``newllm.pipeline``).
* :func:`data_provenance` / :func:`check_data_provenance` — the corpus, tokenizer,
  embeddings and validation-split settings a study's data was built from, recorded in
  ``results/{study}/provenance.json``; a config that changes them for an existing study
  is refused before any job starts (nothing is deleted), unless the user asks to rebuild.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

PACKAGE = "newllm"
PACKAGE_DIR = Path(__file__).resolve().parent
"""The ``newllm`` package folder whose modules are hashed."""
CODE_HASH_CHARS = 16
"""Hex digits kept of a code hash (64 bits: shown in logs and ``--list-changes``)."""
PROVENANCE_FILE = "provenance.json"
"""Data provenance of a study, inside ``results/{study}/``."""
VALIDATION_KEYS = ("dev_samples", "test_samples", "embedding_samples", "seed")
"""Keys of the ``validation`` section that decide the dev/test/embedding/pool split."""
REBUILD_FLAG = "rebuild_data"
"""Config key (``--config rebuild_data=True``) that allows rebuilding a study from other data."""


class ProvenanceError(ValueError):
    """A study would be rebuilt from other data, or its local corpus file is missing."""


# --------------------------------------------------------------------------- code hashes
def _module_file(name: str, package_dir: Path) -> Path | None:
    """File of module ``name`` (``newllm.x.y``) inside ``package_dir``, or ``None``."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, package_dir: Path) -> str:
    """Dotted name of a file inside the package (``newllm/a/__init__.py`` -> ``newllm.a``)."""
    rel = path.relative_to(package_dir).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=None)
def _import_statements(source: bytes, filename: str) -> tuple[tuple[int, str | None, tuple[str, ...]], ...]:
    """``(level, module, names)`` of every import statement in a file's source, in order:
    level ``-1`` and module ``None`` for ``import a, b``; ``from`` imports keep their
    relative level (0 = absolute).  Cached by content, so one DAG build parses each file
    once however many rules' scripts import it."""
    statements = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            statements.append((-1, None, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            statements.append((node.level, node.module, tuple(alias.name for alias in node.names)))
    return tuple(statements)


def imported_modules(path: str | Path, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """Names of the package modules one Python file imports, anywhere in it (also inside
    functions) and whether absolute or relative; ``from newllm.x import y`` counts ``y``
    when it is a module, else ``newllm.x``.

    Raises:
        SyntaxError: the file does not parse.
    """
    path = Path(path)
    inside = path.resolve().is_relative_to(package_dir)
    own = _module_name(path.resolve(), package_dir) if inside else None
    found: set[str] = set()
    for level, module, names in _import_statements(path.read_bytes(), str(path)):
        if level < 0:
            found.update(names)
            continue
        if level:
            if own is None:
                continue  # a relative import outside the package is not ours
            anchor = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
            anchor = anchor[: len(anchor) - (level - 1)]
            module = ".".join(anchor + ([module] if module else []))
        else:
            module = module or ""
        found.add(module)
        found.update(f"{module}.{name}" for name in names)
    return {name for name in found if _module_file(name, package_dir) is not None}


def module_closure(script: str | Path, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Every package file that running ``script`` imports: its ``newllm`` imports, what
    those import in turn, and the ``__init__.py`` of each package on the way, sorted.

    Static (``ast``), so it follows the code as it is now, including imports inside
    functions; an import made from a computed string is not seen.
    """
    seen: dict[str, Path] = {}
    todo = sorted(imported_modules(script, package_dir))
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            prefix = ".".join(parts[:i])
            if prefix in seen:
                continue
            file = _module_file(prefix, package_dir)
            if file is None:
                continue
            seen[prefix] = file
            todo.extend(sorted(imported_modules(file, package_dir) - set(seen)))
    return sorted(set(seen.values()))


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """``tree`` with every statement that is only a string literal removed: the docstrings
    of the module, its classes and functions, and the attribute docstrings after
    assignments.  They never run; a body left empty becomes ``pass``."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            kept = [
                stmt
                for stmt in body
                if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str))
            ]
            if len(kept) != len(body):
                setattr(node, field, kept or ([ast.Pass()] if field == "body" and not isinstance(node, ast.Module) else []))
    return tree


def code_text(path: str | Path) -> str:
    """The code of a Python file as it runs: its syntax tree without docstrings
    (:func:`_without_docstrings`), comments, line numbers or layout, as ``ast.dump`` text.

    Two files give the same text when they differ only in docstrings, comments, blank
    lines, line breaks, quotes or parentheses.  The text depends on the Python version's
    ``ast`` node fields, so a new Python version may give new text.

    Raises:
        SyntaxError: the file does not parse.
    """
    path = Path(path)
    return _code_text(path.read_bytes(), str(path))


def _code_text(source: bytes, filename: str) -> str:
    """:func:`code_text` of a file's source (the hash of it is what is cached, :func:`_code_digest`)."""
    tree = _without_docstrings(ast.parse(source, filename=filename))
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


@functools.lru_cache(maxsize=None)
def _code_digest(source: bytes, filename: str) -> str:
    """sha256 hex digest of :func:`code_text` of a file's source; cached by content."""
    return hashlib.sha256(_code_text(source, filename).encode()).hexdigest()


def hash_files(files: Iterable[Path], root: Path) -> str:
    """Hash of the code of Python files named relative to ``root``: each name and its
    :func:`code_text` (docstrings, comments, layout and mtimes ignored)."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        content = _code_digest(file.read_bytes(), str(file))
        digest.update(f"{file.relative_to(root).as_posix()}\0{content}\n".encode())
    return digest.hexdigest()[:CODE_HASH_CHARS]


@functools.lru_cache(maxsize=None)
def code_hash(script: str | Path, package_dir: Path = PACKAGE_DIR) -> str:
    """Hash (16 hex digits) of the code of the package modules a workflow script uses.

    Args:
        script: path of the rule's workflow script.

    Returns:
        :func:`hash_files` of :func:`module_closure`: it changes when a statement of one
        of those modules changes, not when only a docstring, a comment or the layout does
        (those cannot change a result); the same for every script that uses no package
        module.  Cached per script and each file's parse by its content, so one DAG build
        parses each file once.

    Raises:
        FileNotFoundError: ``script`` does not exist.
        SyntaxError: the script or one of the modules does not parse.
    """
    return hash_files(module_closure(script, package_dir), package_dir.parent)


# --------------------------------------------------------------------------- data provenance
def data_provenance(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a study's data is built from (schema defaults filled in): ``corpus``,
    ``tokenizer``, ``embeddings`` and the split keys of ``validation``
    (:data:`VALIDATION_KEYS`).  Changing any of them changes the token cache, the
    dev/test files or the frozen embeddings, and so every run of the study."""
    return copy.deepcopy(
        {
            "corpus": config["corpus"],
            "tokenizer": config["tokenizer"],
            "embeddings": config["embeddings"],
            "validation": {key: config["validation"][key] for key in VALIDATION_KEYS if key in config["validation"]},
        }
    )


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def provenance_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every dotted key whose value differs (JSON-normalised, so a
    tuple equals a list); ``"(absent)"`` marks a key one side lacks.  A key absent on one
    side and ``None`` on the other is no change: a setting added later with a null default
    means what a record made before it existed means."""
    old = _flatten(json.loads(json.dumps(recorded)))
    new = _flatten(json.loads(json.dumps(current)))
    missing = "(absent)"
    return [
        f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing) and {old.get(key, missing), new.get(key, missing)} != {missing, None}
    ]


def recorded_provenance(study_dir: str | Path) -> dict[str, Any] | None:
    """The data provenance an existing study was built from, or ``None`` for a new study.

    From ``provenance.json``; for a study built before that file existed, the ``corpus``
    section its token-cache manifest recorded (the other sections are then unknown).
    """
    study_dir = Path(study_dir)
    path = study_dir / PROVENANCE_FILE
    if path.is_file():
        return {
            key: value
            for key, value in json.loads(path.read_text()).items()
            if key in ("corpus", "tokenizer", "embeddings", "validation")
        }
    manifest = study_dir / "data" / "corpus" / "manifest.json"
    if manifest.is_file():
        corpus = json.loads(manifest.read_text()).get("corpus")
        return {"corpus": corpus} if corpus is not None else None
    return None


def check_corpus_files(corpus: dict[str, Any]) -> None:
    """A ``local`` corpus must exist whether or not its token cache does.

    Raises:
        ProvenanceError: naming each missing file.
    """
    if corpus.get("source") != "local" or not corpus.get("path"):
        return
    files = corpus["path"] if isinstance(corpus["path"], list) else [corpus["path"]]
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        raise ProvenanceError(f"corpus.path {', '.join(map(repr, missing))} does not exist (corpus.source: local)")


def check_data_provenance(config: dict[str, Any], study_dir: str | Path) -> dict[str, Any]:
    """Refuse a config that would rebuild an existing study from other data.

    Compares :func:`data_provenance` of ``config`` with what ``study_dir`` was built from
    (:func:`recorded_provenance`).  Runs before any job, so refusing deletes nothing.

    Args:
        config: the validated config (schema defaults filled in); ``config["study"]``
            names the study, ``config.get("rebuild_data")`` allows the rebuild.
        study_dir: ``results/{study}`` relative to the working directory.

    Returns:
        The current data provenance (what the ``data_provenance`` rule records).

    Raises:
        ProvenanceError: a local corpus file is missing, or the data settings differ from
            the recorded ones and ``rebuild_data`` is not set; the message names every
            changed key and both ways out.
    """
    check_corpus_files(config["corpus"])
    current = data_provenance(config)
    recorded = recorded_provenance(study_dir)
    if recorded is None or config.get(REBUILD_FLAG):
        return current
    changes = provenance_changes(recorded, {key: current[key] for key in recorded})
    if changes:
        study = config["study"]
        listing = "\n  ".join(changes)
        raise ProvenanceError(
            f"study {study!r} in {study_dir}/ was built from other data; this config changes:\n  {listing}\n"
            f"Snakemake would rebuild its token cache, splits and embeddings and retrain every run "
            f"under the same name.  Nothing was run or deleted.  Either give this data its own study "
            f"(a new `study:` name in your config file, or --config study=NEW_NAME), or rebuild "
            f"{study!r} from it on purpose with --config {REBUILD_FLAG}=True."
        )
    return current
