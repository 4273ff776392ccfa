"""Writing the tables: formula-safe CSV, JSON, Parquet, and the chain-of-custody manifest.

Hostnames, STUN usernames and HTTP hosts in captures are attacker-controlled, and investigators
open CSV files in spreadsheets. A text cell that begins with ``=``, ``+``, ``-``, ``@``, tab or
carriage return is neutralised with a leading ``'`` (OWASP "CSV Injection"), so no spreadsheet
evaluates it as a formula. Numeric columns are never quoted or altered.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from inspector.digest import sha256_file
from inspector.errors import InspectorError

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
FORMATS = ("csv", "json", "parquet")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def neutralise(cell: str) -> str:
    """Prefix a text cell that a spreadsheet would read as a formula."""
    if cell and cell[0] in FORMULA_TRIGGERS:
        return "'" + cell
    return cell


def _iso_utc(col: pd.Series) -> pd.Series:
    """``TIME_FORMAT`` text of a datetime column (UTC, microseconds, "Z"), "" for missing.

    numpy formats the whole column in C; ``Series.dt.strftime`` calls Python per value. A naive
    column is taken as UTC already.
    """
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    values = col.to_numpy(dtype="datetime64[ns]").astype("datetime64[us]")
    text = np.char.add(np.datetime_as_string(values, unit="us"), "Z").astype(object)
    text[np.isnat(values)] = ""
    return pd.Series(text, index=col.index, dtype=object)


def _text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Timestamps to ISO-8601 UTC strings; text columns neutralised; numbers untouched."""
    out = frame.copy(deep=False)  # columns are replaced below, never changed in place
    for name in out.columns:
        col = out[name]
        if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(col):
            out[name] = _iso_utc(col)
        elif pd.api.types.is_string_dtype(col) or col.dtype == object:
            text = col.fillna("").astype(str)
            risky = text.str[:1].isin(FORMULA_TRIGGERS)
            out[name] = text.where(~risky, "'" + text) if risky.any() else text
    return out


def write_table(frame: pd.DataFrame, path: Path, fmt: str) -> Path:
    """Write one table as ``fmt``; returns the path written."""
    if fmt == "csv":
        # CRLF row ends (RFC 4180 §2): the csv writer then quotes every cell holding a CR or LF,
        # so a hostile name with a bare carriage return cannot split a row.
        _text_frame(frame).to_csv(path, index=False, lineterminator="\r\n")
    elif fmt == "json":
        records = _text_frame(frame).to_dict(orient="records")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
    elif fmt == "parquet":
        try:
            frame.to_parquet(path, index=False)
        except ImportError as e:
            raise InspectorError(f"{path}: Parquet output needs pyarrow: pip install pyarrow") from e
    else:
        raise InspectorError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    return path


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
