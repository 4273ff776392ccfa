"""Writing the tables: formula-safe CSV, JSON, Parquet, and the chain-of-custody manifest.

Hostnames, STUN usernames and HTTP hosts in captures are attacker-controlled, and investigators
open CSV files in spreadsheets. A text cell that begins with ``=``, ``+``, ``-``, ``@``, tab or
carriage return is neutralised with a leading ``'`` (OWASP "CSV Injection"), so no spreadsheet
evaluates it as a formula. Numeric columns are never quoted or altered.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inspector.digest import sha256_file
from inspector.errors import InspectorError

if TYPE_CHECKING:  # pandas is imported where frames are made: the packet path never needs it
    import pandas as pd

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_TRIGGER_CHARACTERS = frozenset(FORMULA_TRIGGERS)
FORMATS = ("csv", "json", "parquet")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
#: Rows converted to text at a time when writing CSV/JSON: the text copy of a table (every cell a
#: string) is several times its in-memory size, so it is made one chunk at a time.
CHUNK_ROWS = 16384


def neutralise(cell: str) -> str:
    """Prefix a text cell that a spreadsheet would read as a formula."""
    if cell and cell[0] in FORMULA_TRIGGERS:
        return "'" + cell
    return cell


def iso_utc(col: pd.Series) -> pd.Series:
    """``TIME_FORMAT`` text of a datetime column (UTC, microseconds, "Z"), "" for missing.

    numpy formats the whole column in C; ``Series.dt.strftime`` calls Python per value. A naive
    column is taken as UTC already.
    """
    import pandas as pd
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    return pd.Series(_iso_texts(col.to_numpy(dtype="datetime64[ns]")), index=col.index, dtype=object)


def _iso_texts(values: np.ndarray) -> np.ndarray:
    """``TIME_FORMAT`` text of each datetime64 (or int64 nanoseconds, UTC), "" for NaT."""
    values = values.astype("datetime64[ns]").astype("datetime64[us]")
    text = np.char.add(np.datetime_as_string(values, unit="us"), "Z").astype(object)
    text[np.isnat(values)] = ""
    return text


def _column_kind(col: pd.Series) -> str:
    """How a table column is written: "time" (ISO-8601 UTC text), "text" (neutralised) or
    "value" (numbers and booleans as they are). One rule for ``_text_frame`` and
    ``_column_cells``, whose outputs must agree byte for byte."""
    import pandas as pd
    if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(col):
        return "time"
    if col.dtype == object or pd.api.types.is_string_dtype(col):
        return "text"
    return "value"


def _text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Timestamps to ISO-8601 UTC strings; text columns neutralised; numbers untouched."""
    out = frame.copy(deep=False)  # columns are replaced below, never changed in place
    for name in out.columns:
        col = out[name]
        kind = _column_kind(col)
        if kind == "time":
            out[name] = iso_utc(col)
        elif kind == "text":
            text = col.fillna("").astype(str)
            risky = text.str[:1].isin(FORMULA_TRIGGERS)
            out[name] = text.where(~risky, "'" + text) if risky.any() else text
    return out


def _row_chunks(frame: pd.DataFrame, rows: int) -> Iterator[pd.DataFrame]:
    """The frame in consecutive row slices of at most ``rows`` (one empty slice for an empty
    frame, so a header is still written). Slices are views: no column is copied here."""
    if len(frame) == 0:
        yield frame
        return
    for start in range(0, len(frame), rows):
        yield frame.iloc[start : start + rows]


def _is_missing(value: object) -> bool:
    import pandas as pd
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


#: A cell holding one of these is quoted (RFC 4180 §2; the csv module's QUOTE_MINIMAL with "," as
#: delimiter, '"' as quote and "\r\n" as row end).
_NEEDS_QUOTES = re.compile('[",\r\n]')


def _quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"' if _NEEDS_QUOTES.search(cell) else cell


#: Integers below this are written from a table of their texts, made once per process on first
#: use (~9 ms): looking a text up costs a quarter of making it with ``str``, and a flows table's
#: ports, packet counts and VLAN ids are all below it (~25 ms less per 60 k flows).
SMALL_INT_LIMIT = 1 << 16
_small_int_texts: list[str] = []


def _int_cells(values: np.ndarray) -> list[str]:
    """Integer cells (``str`` of each value) of an integer array."""
    ints = values.tolist()
    if values.size and int(values.min()) >= 0 and int(values.max()) < SMALL_INT_LIMIT:
        if not _small_int_texts:
            _small_int_texts.extend(map(str, range(SMALL_INT_LIMIT)))
        return list(map(_small_int_texts.__getitem__, ints))
    return list(map(str, ints))


def _float_cells(values: np.ndarray) -> list[str]:
    """Float cells as the csv module writes them; NaN as an empty cell."""
    # repr of a Python float is the shortest text for 64 bits; a narrower float widened to one
    # would show its binary noise (0.10000000149011612), so numpy formats those.
    cells = list(map(repr, values.tolist())) if values.dtype.itemsize == 8 else values.astype(str).tolist()
    for k in np.flatnonzero(np.isnan(values)).tolist():
        cells[k] = ""
    return cells


def _csv_cells(col: pd.Series) -> list[str]:
    """One column of a ``_text_frame`` as CSV cells, as the csv module writes them, which is
    also what ``DataFrame.to_csv`` writes (tested): ints and bools with ``str``, floats with
    ``repr`` (the shortest text that reads back to the same float), a missing value (NaN, NA,
    None) as an empty cell, text quoted only when it holds a comma, quote, CR or LF."""
    import pandas as pd
    dtype = col.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":
        return _int_cells(col.to_numpy())
    if isinstance(dtype, np.dtype) and dtype.kind == "b":
        return list(map(str, col.tolist()))
    if pd.api.types.is_float_dtype(dtype):
        width = getattr(dtype, "itemsize", 8)
        return _float_cells(col.to_numpy(dtype=np.dtype(f"f{width}"), na_value=np.nan))
    if isinstance(dtype, pd.BooleanDtype):  # nullable: True, False, or empty for a missing value
        cells = np.where(col.to_numpy(dtype=bool, na_value=False), "True", "False").astype(object)
        cells[col.isna().to_numpy()] = ""
        return cells.tolist()
    cells = col.astype(object).tolist()
    if not all(type(v) is str for v in cells):
        cells = ["" if _is_missing(v) else v if type(v) is str else repr(v) if isinstance(v, float) else str(v) for v in cells]
    # Hostile or odd names aside, no cell needs quotes: one scan of the column says so.
    if _NEEDS_QUOTES.search("".join(cells)):
        cells = [_quoted(v) for v in cells]
    return cells


def _write_csv(frames: Iterable[pd.DataFrame], path: Path) -> None:
    """CSV text written frame by frame: only one frame's text copy exists at a time.

    The bytes do not depend on how the rows are cut into frames: every cell is formatted and
    quoted on its own, and the header is written once, with the first frame. Rows end in CRLF
    (RFC 4180 §2), so a cell holding a bare CR is quoted and a hostile name cannot split a row.
    The cells are joined here rather than by the csv module, which spends ~250 ns a cell.
    """
    # newline="": the "\r\n" row ends reach the file untranslated.
    with open(path, "w", encoding="utf-8", newline="") as fh:
        for number, chunk in enumerate(frames):
            if len(chunk.columns) == 0:  # an empty header, then an empty line per row
                fh.write("\r\n" * ((number == 0) + len(chunk)))
                continue
            if number == 0:
                fh.write(_csv_rows([[_quoted(str(name))] for name in chunk.columns]))
            fh.write(_csv_rows([_column_cells(chunk[name]) for name in chunk.columns]))


def _column_cells(col: pd.Series) -> list[str]:
    """``_csv_cells(_text_frame(frame)[name])`` (tested), with a text column's cells made once
    per distinct value (``_text_cell``) and looked up by ``pd.factorize``'s codes: the call
    stage's tables repeat their services, kinds and names, and the per-value string work was
    most of writing them (destinations, media and sessions of the benchmark 0.103 -> 0.082 s)."""
    import pandas as pd
    kind = _column_kind(col)
    if kind == "time":
        return _csv_cells(iso_utc(col))
    if kind == "text":
        try:
            codes, distinct = pd.factorize(col, use_na_sentinel=True)
        except TypeError:  # an unhashable value: convert the column as a whole
            return _csv_cells(_text_frame(col.to_frame())[col.name])
        known = _text_cells(distinct.tolist())
        known.append("")  # code -1, a missing value, reads the last entry
        return list(map(known.__getitem__, codes.tolist()))
    return _csv_cells(col)


def _text_cell(value: object) -> str:
    """What ``_text_frame`` and ``_csv_cells`` make of one value of a text column."""
    text = "" if _is_missing(value) else str(value)
    return _quoted(neutralise(text))


def _text_cells(values: list) -> list[str]:
    """``_text_cell`` of each value, with a plain ``str`` (nearly every value: names, addresses,
    labels) taken as it is rather than tested for the missing markers first: a flows table has
    tens of thousands of distinct texts."""
    cells = []
    for value in values:
        if type(value) is not str:
            cells.append(_text_cell(value))
            continue
        text = "'" + value if value and value[0] in _TRIGGER_CHARACTERS else value
        cells.append('"' + text.replace('"', '""') + '"' if _NEEDS_QUOTES.search(text) else text)
    return cells


def plain_cells(kind: str, data, formatted: dict[int, tuple]) -> list[str]:
    """One ``summarize.CaptureFlows.plain_columns_of`` column as CSV cells, equal to what
    ``_csv_cells(_text_frame(frame)[name])`` gives for the frame made of it: text formatted once
    per distinct value, numbers and times as there. ``formatted`` keeps each table of distinct
    values' cells (by identity, with the table) for the next columns and slices."""
    if kind == "text":
        values, codes = data
        known = formatted.get(id(values))
        if known is None:
            known = formatted[id(values)] = (values, _text_cells(values.tolist()))
        return list(map(known[1].__getitem__, codes.tolist()))
    if kind == "int":
        return _int_cells(data)
    if kind == "float":
        return _float_cells(data)
    if kind == "time":
        return _iso_texts(data).tolist()
    raise ValueError(f"unknown column kind {kind!r}")


def write_plain_csv(chunks: Iterable[list[tuple[str, str, object]]], path: Path, header: bool = True) -> Path:
    """The flows table as CSV from ``summarize.FinishedFlows.plain_chunks``: the bytes
    ``write_frames(FinishedFlows.chunks(...), path, "csv")`` writes (tested), without making a
    frame or a Python string per text cell first (a capture's flows share few distinct names,
    addresses and labels: each is neutralised and quoted once). ``header=False``: the rows only
    (a later part of the table, ``api._SplitFlowsCsv``)."""
    formatted: dict[int, tuple] = {}
    with open(path, "w", encoding="utf-8", newline="") as fh:
        for number, columns in enumerate(chunks):
            if number == 0 and header:
                fh.write(plain_csv_header(columns))
            fh.write(plain_csv_rows(columns, formatted))
    return path


def plain_csv_header(columns: list[tuple[str, str, object]]) -> str:
    """The header row of a table of ``summarize.CaptureFlows.plain_columns_of`` columns."""
    return _csv_rows([[_quoted(name)] for name, _, _ in columns])


def plain_csv_rows(columns: list[tuple[str, str, object]], formatted: dict[int, tuple]) -> str:
    """The rows of one ``plain_columns_of`` slice as CSV text, each ended by CRLF (``formatted``:
    the distinct values' cells made so far, ``plain_cells``)."""
    return _csv_rows([plain_cells(kind, data, formatted) for _, kind, data in columns])


def _csv_rows(columns: list[list[str]]) -> str:
    """Rows of cells, each row ended by CRLF."""
    if not columns or not columns[0]:
        return ""
    if len(columns) == 1:
        # A row of one empty cell is written '""', so that it is not a blank line (as the csv
        # module does).
        rows = [cell or '""' for cell in columns[0]]
    else:
        rows = list(map(",".join, zip(*columns)))
    rows.append("")
    return "\r\n".join(rows)


def _write_json(frames: Iterable[pd.DataFrame], path: Path) -> None:
    """A JSON array of records, the bytes of ``json.dump(records, fh, indent=1)``, streamed.

    Each record is encoded alone and indented one level more, as the list would nest it: JSON
    strings hold no raw newline (the encoder escapes it as ``\\n``), so every newline in a
    record's text is a line break of the layout. Only one frame's records exist at a time.
    """
    with open(path, "w", encoding="utf-8") as fh:
        separator = "[\n "
        for chunk in frames:
            for record in _text_frame(chunk).to_dict(orient="records"):
                fh.write(separator)
                fh.write(json.dumps(record, indent=1, ensure_ascii=False).replace("\n", "\n "))
                separator = ",\n "
        fh.write("[]\n" if separator == "[\n " else "\n]\n")


def _write_parquet(frames: Iterable[pd.DataFrame], path: Path) -> None:
    """One Parquet file, a row group per frame (the schema, pandas dtypes included, is the
    first frame's; every frame of a table has the same)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise InspectorError(f"{path}: Parquet output needs pyarrow: pip install pyarrow") from e
    writer = None
    try:
        for frame in frames:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def write_frames(frames: Iterable[pd.DataFrame], path: Path, fmt: str) -> Path:
    """Write one table, given as consecutive frames of the same columns (at least one, maybe
    empty), as ``fmt``; returns the path written. A table made slice by slice
    (``summarize.FinishedFlows.chunks``) is written without ever being whole in memory."""
    if fmt == "csv":
        _write_csv(frames, path)
    elif fmt == "json":
        _write_json(frames, path)
    elif fmt == "parquet":
        _write_parquet(frames, path)
    else:
        raise InspectorError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    return path


def write_table(frame: pd.DataFrame, path: Path, fmt: str, chunk_rows: int = CHUNK_ROWS) -> Path:
    """Write one table as ``fmt``; returns the path written. ``chunk_rows``: rows converted to
    text at a time (CSV, JSON): memory only, the bytes written never depend on it."""
    if fmt == "parquet":  # one row group, as pandas writes it
        return write_frames([frame], path, fmt)
    return write_frames(_row_chunks(frame, chunk_rows), path, fmt)


def write_manifest(manifest: dict, out_dir: Path, outputs: Iterable[Path]) -> Path:
    """Add every output file with its size and SHA-256, then write manifest.json."""
    manifest = dict(manifest)
    manifest["outputs"] = [
        {"file": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(outputs)
    ]
    path = out_dir / "manifest.json"
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")
    return path
