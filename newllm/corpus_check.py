"""Up-front check of a local corpus (``corpus.source: local``), before ``datasets`` reads it.

``datasets`` stops on a malformed JSON line with a pyarrow traceback from deep inside its
builder, and a row without the configured field fails later as a bare ``KeyError``.
:func:`check_local_corpus` reads the files first, row by row, and raises a
:class:`~newllm.data.DataError` that names the file, the line (or row) and the field.
It runs at DAG time (``newllm.config.check_config``, while the study has no token cache)
and again in the ``cache_corpus`` job before ``newllm.data.load_corpus_dataset``.

JSON lines and CSV are read with the standard library, parquet with ``pyarrow`` (one
column at a time).  A sample's text is :func:`newllm.data.sample_text`, exactly what the
token cache is built from, so empty texts and exact duplicates are counted the way
:func:`newllm.data.build_corpus_cache` drops them.  No torch import.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from newllm.data import DataError, sample_text

NEEDED_SAMPLES = "validation.dev_samples + test_samples + embedding_samples + the largest of sample_sizes"
"""What ``needed_samples`` of :func:`check_local_corpus` counts (named in its error)."""
FORMATS = ("json", "parquet", "csv")
"""``corpus.data_format`` values: JSON lines, parquet, CSV with a header row."""


@dataclass
class CorpusCount:
    """Rows of a local corpus that the token cache reads (the first ``max_samples``) and
    what it keeps of them: :attr:`usable` non-empty samples whose text is not a copy of an
    earlier one."""

    rows: int = 0
    empty: int = 0
    duplicates: int = 0
    seen: set[bytes] = field(default_factory=set, repr=False)

    @property
    def usable(self) -> int:
        return self.rows - self.empty - self.duplicates

    def add(self, text: str | None) -> None:
        """Count one row with sample text ``text`` (``None``: unknown, counted as usable)."""
        self.rows += 1
        if text is None:
            return
        if not text.strip():
            self.empty += 1
            return
        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if digest in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(digest)


def _field_setting(corpus_cfg: dict[str, Any]) -> tuple[str, str] | None:
    """``(config key, field name)`` every row must hold: ``text_field`` when set, else
    ``messages_field``; ``None`` when the section names neither (schema defaults not filled)."""
    if corpus_cfg.get("text_field"):
        return "text_field", corpus_cfg["text_field"]
    if corpus_cfg.get("messages_field"):
        return "messages_field", corpus_cfg["messages_field"]
    return None


def _check_row(row: Any, where: str, corpus_cfg: dict[str, Any]) -> str | None:
    """The text of one row, or ``None`` when the config names no field.

    Raises:
        DataError: ``where`` (file and line) names a row that is no object, lacks the
            configured field, or whose messages are not a list of ``{content}`` objects.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: a JSON {_json_kind(row)} where one object (one sample) belongs")
    setting = _field_setting(corpus_cfg)
    if setting is None:
        return None
    key, name = setting
    value = row.get(name)
    if name not in row:
        fields = ", ".join(map(repr, row)) or "none"
        other = "the messages" if key == "messages_field" else "each sample's text"
        raise DataError(
            f"{where}: no field {name!r} (corpus.{key}); the row's fields: {fields}. Set corpus.{key} to the field "
            f"that holds {other}" + (", or corpus.text_field to a plain-text field" if key == "messages_field" else "")
        )
    if value is None:
        raise DataError(f"{where}: field {name!r} (corpus.{key}) is null; every row needs a value there (or drop the row)")
    if key == "messages_field":
        if not isinstance(value, list):
            raise DataError(
                f"{where}: field {name!r} (corpus.messages_field) is a {_json_kind(value)}, not a list of messages "
                f'[{{"role": ..., "content": ...}}, ...]; for a plain-text field set corpus.text_field: {name}'
            )
        for number, message in enumerate(value, 1):
            if not isinstance(message, dict) or message.get("content") is None:
                raise DataError(
                    f"{where}: message {number} of field {name!r} (corpus.messages_field) has no 'content'; "
                    f'each message must be an object {{"role": ..., "content": "..."}}'
                )
    return sample_text(row, corpus_cfg.get("messages_field", "messages"), corpus_cfg.get("text_field"))


def _json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type (object, array, string, number, boolean, null)."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of a UTF-8 file (a leading byte-order mark dropped).

    Raises:
        DataError: the file cannot be opened or a line is not UTF-8.
    """
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise DataError(f"corpus file {path} cannot be read: {err.strerror}") from err
    with handle:
        try:
            for number, raw in enumerate(handle, 1):
                try:
                    yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"corpus file {path}, line {number}: not UTF-8 text (byte {err.start + 1} of the line)"
                    ) from err
        except OSError as err:
            raise DataError(f"corpus file {path} cannot be read: {err.strerror}") from err


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` of each non-blank line of a JSON-lines file.

    Raises:
        DataError: a line is not valid JSON, or the file is one JSON array.
    """
    first = True
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"corpus file {path}, line {number}"
        if first and line.lstrip().startswith("["):
            raise DataError(
                f"{where}: a JSON array; corpus.data_format json reads JSON lines: one object per line, no enclosing [ ]"
            )
        first = False
        line = line.rstrip("\r\n")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            at = "at the end of the line" if err.pos >= len(line.rstrip()) else f"at column {err.colno}"
            raise DataError(
                f"{where}: not valid JSON ({err.msg} {at}); corpus.data_format json reads JSON lines: one object per line"
            ) from err
        yield where, row


def _missing_column(path: Path, setting: tuple[str, str] | None, columns: list[str]) -> None:
    """Raise when the configured field is none of a file's ``columns`` (CSV, parquet).

    Raises:
        DataError: naming the file, the field, its config key and the columns there are.
    """
    if setting is not None and setting[1] not in columns:
        key, name = setting
        raise DataError(
            f"corpus file {path}: no column {name!r} (corpus.{key}); its columns: {', '.join(map(repr, columns)) or 'none'}. "
            f"Set corpus.{key} to one of them"
        )


def _csv_rows(path: Path, setting: tuple[str, str] | None) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` of each record of a CSV file with a header row (columns -> values).

    Raises:
        DataError: no header, no column for the configured field, a malformed record, or
            a record with more values than the header has columns.
    """
    records = csv.reader((text for _, text in _lines(path)), strict=True)
    try:
        header = next(records, None)
        if not header:
            raise DataError(f"corpus file {path}: no header row (corpus.data_format csv needs one naming the columns)")
        _missing_column(path, setting, header)
        for record in records:
            where = f"corpus file {path}, line {records.line_num}"
            if not record:
                continue
            if len(record) > len(header):
                raise DataError(f"{where}: {len(record)} values but {len(header)} columns in the header row")
            yield where, dict(zip(header, record))
    except csv.Error as err:
        raise DataError(f"corpus file {path}, line {records.line_num}: not valid CSV ({err})") from err


def _parquet_rows(path: Path, setting: tuple[str, str] | None) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` of each row of a parquet file; only the configured column is read.

    Raises:
        DataError: the file cannot be read as parquet, or it lacks the configured column.
    """
    import pyarrow
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except OSError as err:
        raise DataError(f"corpus file {path} cannot be read: {err.strerror or err}") from err
    except pyarrow.ArrowException as err:
        raise DataError(f"corpus file {path} is not a parquet file ({err})") from err
    names = parquet.schema_arrow.names
    _missing_column(path, setting, names)
    number = 0
    for batch in parquet.iter_batches(columns=[setting[1]] if setting else names[:1]):
        for row in batch.to_pylist():
            number += 1
            yield f"corpus file {path}, row {number}", row


def corpus_files(path: str | Path | list) -> list[Path]:
    """The files of ``corpus.path`` (a file or a list of files), in the given order."""
    return [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]


def check_local_corpus(path: str | Path | list, corpus_cfg: dict[str, Any], needed_samples: int | None = None) -> CorpusCount:
    """Read a local corpus with the standard library and refuse what would fail to load.

    Every row of every file is parsed (``datasets`` parses them all); the first
    ``corpus.max_samples`` rows, those the token cache reads, must hold the configured
    field and are counted.

    Args:
        path: ``corpus.path``: a file or a list of files, read in order.
        corpus_cfg: the ``corpus`` config section (``data_format``, ``text_field`` or
            ``messages_field``, ``max_samples``).  A section that names neither field has
            only its rows checked.
        needed_samples: the samples the study takes (:data:`NEEDED_SAMPLES`); ``None``
            skips the count.

    Returns:
        The :class:`CorpusCount` of the rows the token cache reads.

    Raises:
        DataError: naming the file, the line (``row`` for parquet) and the field: a file
            that is missing or unreadable, a line that is not JSON (or not UTF-8 or not
            CSV), a row that is not an object, a missing or null configured field,
            messages that are not a list of ``{content}`` objects, or fewer usable samples
            than ``needed_samples``.
    """
    data_format = corpus_cfg.get("data_format", "json")
    if data_format not in FORMATS:
        raise DataError(f"corpus.data_format {data_format!r} is not one of {', '.join(FORMATS)}")
    setting = _field_setting(corpus_cfg)
    if data_format == "csv" and setting is not None and setting[0] == "messages_field":
        raise DataError(
            f"corpus.data_format csv has no message lists (corpus.messages_field {setting[1]!r}); "
            "set corpus.text_field to the column that holds each sample's text"
        )
    limit = corpus_cfg.get("max_samples")
    count = CorpusCount()
    files = corpus_files(path)
    for file in files:
        if not file.exists():
            raise DataError(f"corpus file {file} does not exist (corpus.path, corpus.source: local)")
        if file.is_dir():
            raise DataError(f"corpus file {file} is a folder; corpus.path takes a file or a list of files")
        reader = {"json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows}[data_format]
        rows = reader(file) if data_format == "json" else reader(file, setting)
        for where, row in rows:
            if limit is not None and count.rows >= limit:
                if data_format == "parquet":
                    break
                continue  # datasets parses every line of a text file, read or not
            count.add(_check_row(row, where, corpus_cfg))
    if needed_samples is not None and count.usable < needed_samples:
        read = f"the first {limit} rows (corpus.max_samples)" if limit is not None and count.rows >= limit else "its rows"
        names = ", ".join(str(f) for f in files)
        raise DataError(
            f"corpus file{'s' if len(files) > 1 else ''} {names}: {count.usable} usable samples in {read} "
            f"({count.rows} rows; empty: {count.empty}, duplicates: {count.duplicates}); the study needs at least "
            f"{needed_samples} ({NEEDED_SAMPLES}): add samples, or lower sample_sizes or the validation sizes"
        )
    return count
