"""Formula-safe CSV: hostile names read back as the intended text, numbers stay numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from inspector import export
from inspector.export import neutralise, write_table

HOSTILE = [
    "=cmd|' /C calc'!A0",
    "@SUM(1)",
    "+1",
    "-2+3",
    "\tTAB",
    "\rCR",
    'a,b "quoted"\nnew line',
    "plain.example.com",
    "",
]


def test_neutralise():
    assert neutralise("=1+1") == "'=1+1"
    assert neutralise("@x") == "'@x"
    assert neutralise("example.com") == "example.com"
    assert neutralise("") == ""


def test_text_cells_of_many_values_are_each_values_cell():
    # The batch path for plain strings against the per-value definition: formula triggers,
    # quotes, commas and line ends, a str subclass, and the missing markers.
    values = HOSTILE + ['say "hi"', "a,b", "x\ny", "'=", "", np.str_("=1"), None, pd.NA, float("nan"), 7, 2.5]
    assert export._text_cells(values) == [export._text_cell(v) for v in values]
    assert export._text_cells(["=1", 'q"', "plain"]) == ["'=1", '"q"""', "plain"]


@pytest.mark.parametrize(
    "values",
    [
        np.arange(export.SMALL_INT_LIMIT, dtype=np.int64),  # every value of the table, its ends too
        np.array([0, 65535, 65536], dtype=np.int64),  # one past the table: all by str
        np.array([-1, 3, 80], dtype=np.int64),
        np.array([443, 7, 0], dtype=np.uint16),
        np.array([2**64 - 1, 5], dtype=np.uint64),
        np.array([200, 1], dtype=np.uint8),
        np.zeros(0, dtype=np.int64),
    ],
)
def test_int_cells_are_the_str_of_each_value(values):
    assert export._int_cells(values) == [str(v) for v in values.tolist()]


def test_hostile_names_round_trip_without_formulas(tmp_path):
    frame = pd.DataFrame(
        {
            "server_name": pd.Series(HOSTILE, dtype="string"),
            "bytes": pd.Series(range(-4, len(HOSTILE) - 4), dtype="int64"),
            "ratio": pd.Series([0.5] * len(HOSTILE), dtype="float64"),
        }
    )
    path = write_table(frame, tmp_path / "t.csv", "csv")
    back = pd.read_csv(path, keep_default_na=False, dtype={"server_name": str})
    for got, sent in zip(back.server_name, HOSTILE):
        assert got == neutralise(sent)
        assert not got.startswith(("=", "+", "-", "@", "\t", "\r"))
    # Numbers are never quoted or altered, negative ones included.
    assert back.bytes.tolist() == frame.bytes.tolist()
    assert back.ratio.tolist() == frame.ratio.tolist()
    raw = path.read_text()
    assert "\n-4," in raw.replace('"', "") or ",-4," in raw


def test_timestamps_are_written_as_utc_microseconds_with_z():
    import pandas as pd

    from inspector.export import TIME_FORMAT, iso_utc

    aware = pd.Series(pd.to_datetime([0, 1_700_000_000_123_456_789, None], unit="ns", utc=True))
    assert list(iso_utc(aware)) == ["1970-01-01T00:00:00.000000Z", "2023-11-14T22:13:20.123456Z", ""]
    assert list(iso_utc(aware)) == list(aware.dt.strftime(TIME_FORMAT).fillna(""))
    paris = aware.dt.tz_convert("Europe/Paris")  # another zone: written in UTC all the same
    assert list(iso_utc(paris)) == list(iso_utc(aware))
    naive = pd.Series(pd.to_datetime([1_700_000_000_999_999_999, None], unit="ns"))
    assert list(iso_utc(naive)) == ["2023-11-14T22:13:20.999999Z", ""]


# --- the chunked CSV/JSON writer: the bytes never depend on the chunk size ---------------------


def _reference_csv(frame: pd.DataFrame) -> bytes:
    """The whole table converted at once, as the writer did before it wrote in chunks."""
    from inspector.export import _text_frame

    return _text_frame(frame).to_csv(index=False, lineterminator="\r\n").encode("utf-8")


def _reference_json(frame: pd.DataFrame) -> bytes:
    import json

    from inspector.export import _text_frame

    records = _text_frame(frame).to_dict(orient="records")
    return (json.dumps(records, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _mixed_frame(rows: int) -> pd.DataFrame:
    names = (HOSTILE + ["zoom.us", "ünïcode.example", 'quote"inside', "x\ny"]) * (rows // 13 + 1)
    return pd.DataFrame(
        {
            "server_name": pd.Series(names[:rows], dtype="string"),
            "bytes": pd.Series(range(-3, rows - 3), dtype="int64"),
            "ratio": pd.Series([i / 7 if i % 5 else float("nan") for i in range(rows)], dtype="float64"),
            "first_seen": pd.to_datetime([1_700_000_000_123_456_789 + i for i in range(rows)], unit="ns", utc=True),
            "during_call": pd.Series([i % 2 == 0 for i in range(rows)], dtype="bool"),
            "note": pd.Series([None if i % 4 == 0 else f"-n{i}" for i in range(rows)], dtype=object),
        }
    )


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 7, 1000])
def test_chunked_writing_gives_the_bytes_of_one_conversion(tmp_path, fmt, chunk_rows):
    """A frame larger than one chunk (hostile cells, CR/LF, quotes and NaN on every chunk edge
    with the small chunk sizes) is written byte for byte as the whole-table conversion."""
    frame = _mixed_frame(40)
    path = write_table(frame, tmp_path / f"t.{fmt}", fmt, chunk_rows=chunk_rows)
    reference = _reference_csv(frame) if fmt == "csv" else _reference_json(frame)
    assert path.read_bytes() == reference


def test_hostile_cells_on_a_chunk_edge_stay_neutralised_and_quoted(tmp_path):
    frame = pd.DataFrame({"server_name": pd.Series(["ok", "=1+1", "\rCR", "a\nb", "@x"], dtype="string")})
    path = write_table(frame, tmp_path / "t.csv", "csv", chunk_rows=2)
    assert path.read_bytes() == b"server_name\r\nok\r\n'=1+1\r\n\"'\rCR\"\r\n\"a\nb\"\r\n'@x\r\n"
    back = pd.read_csv(path, keep_default_na=False, dtype=str)
    assert back.server_name.tolist() == ["ok", "'=1+1", "'\rCR", "a\nb", "'@x"]


def test_the_default_chunk_size_splits_a_large_table_invisibly(tmp_path):
    from inspector.export import CHUNK_ROWS

    frame = _mixed_frame(CHUNK_ROWS + 5)
    assert write_table(frame, tmp_path / "t.csv", "csv").read_bytes() == _reference_csv(frame)
    assert write_table(frame, tmp_path / "t.json", "json").read_bytes() == _reference_json(frame)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_an_empty_table_gives_the_header_or_an_empty_list(tmp_path, fmt):
    frame = _mixed_frame(0)
    data = write_table(frame, tmp_path / f"t.{fmt}", fmt, chunk_rows=4).read_bytes()
    assert data == (_reference_csv(frame) if fmt == "csv" else _reference_json(frame))
    assert data == (b"server_name,bytes,ratio,first_seen,during_call,note\r\n" if fmt == "csv" else b"[]\n")


def test_csv_cells_are_what_pandas_to_csv_writes(tmp_path):
    # The writer formats and joins the cells itself: every dtype the tables use (and narrower
    # floats), with missing values, extreme floats and cells that need quoting, must give
    # pandas' bytes exactly.
    import numpy as np

    rng = np.random.default_rng(7)
    floats = np.concatenate([
        rng.random(3000) * 10.0 ** rng.integers(-20, 25, 3000),
        [0.0, -0.0, 1e16, 1e15, 9999999999999998.0, 123456789012345678.0, 1e-5, 1e-4, 5e-324,
         1.7976931348623157e308, np.inf, -np.inf, np.nan, 0.1 + 0.2, 2.5, 1e22],
    ])  # fmt: skip
    n = floats.shape[0]
    with np.errstate(over="ignore"):  # the largest values become float32 infinities: kept
        floats32 = floats.astype(np.float32)
    frame = pd.DataFrame({
        "f": floats,
        "i": np.arange(n, dtype=np.int64) - 5,
        "u16": (np.arange(n) * 22).astype(np.uint16),  # wraps past 65535: the whole range
        "b": np.arange(n) % 2 == 0,
        "nb": pd.array(([True, False, None] * n)[:n], dtype="boolean"),
        "s": pd.array((["a,b", 'q"x', None, "line\nx", "cr\r", " sp ", "", "=1+1"] * n)[:n], dtype="string"),
        "o": pd.Series((["x", None, "y"] * n)[:n], dtype=object),
        "t": pd.to_datetime(np.arange(n) * 1_000_003, unit="us", utc=True),
        "f32": floats32,
        "nf32": pd.array(floats32, dtype="Float32"),
        "ni": pd.array(([1, None, -3] * n)[:n], dtype="Int64"),
    })  # fmt: skip
    path = write_table(frame, tmp_path / "t.csv", "csv", chunk_rows=1000)
    expected = export._text_frame(frame).to_csv(index=False, lineterminator="\r\n")
    assert path.read_bytes() == expected.encode("utf-8")


def test_a_frame_without_columns_is_written_as_pandas_writes_it(tmp_path):
    frame = pd.DataFrame(index=range(3))
    path = write_table(frame, tmp_path / "t.csv", "csv", chunk_rows=2)
    assert path.read_bytes() == frame.to_csv(index=False, lineterminator="\r\n").encode("utf-8")


@pytest.mark.parametrize("rows", [1, 5, 16384])
def test_flows_csv_from_plain_columns_is_the_csv_of_the_frames(tmp_path, rows):
    """``write_plain_csv`` (what ``Analysis.write`` uses for flows.csv) writes the bytes the
    frame path writes, hostile and missing text included, however the table is sliced."""
    from inspector.export import write_frames, write_plain_csv
    from inspector.summarize import CaptureFlows, FinishedFlows
    from tests.test_summarize import LABELS, _records

    labels = dict(LABELS)
    labels["server_name"] = np.array([None, "@SUM(1)", 'a,"b"\nc'], dtype=object)
    labels["evidence"] = np.array(["-1+1", "\tx", "plain"], dtype=object)
    parts = [
        CaptureFlows("=cmd|' /C calc'!A0", _records(23, seed=1), labels),
        CaptureFlows("", _records(0, seed=2), labels),
        CaptureFlows('call,"one".pcap', _records(9, seed=3), labels),
    ]
    parts[2].set_session_ids(np.array(["s1", "+s2;s3", ""], dtype=object), np.arange(9, dtype=np.int32) % 3)
    table = FinishedFlows(parts)
    plain = write_plain_csv(table.plain_chunks(rows), tmp_path / "plain.csv")
    framed = write_frames(table.chunks(rows), tmp_path / "framed.csv", "csv")
    assert plain.read_bytes() == framed.read_bytes()
    back = pd.read_csv(plain, keep_default_na=False, dtype=str)
    assert len(back) == 32 and back["capture"].iloc[0] == "'=cmd|' /C calc'!A0"
    assert set(back["server_name"]) == {"", "'@SUM(1)", 'a,"b"\nc'}


def test_an_empty_flows_table_gives_the_header(tmp_path):
    from inspector.export import write_frames, write_plain_csv
    from inspector.summarize import FinishedFlows

    plain = write_plain_csv(FinishedFlows([]).plain_chunks(16384), tmp_path / "plain.csv")
    framed = write_frames(FinishedFlows([]).chunks(16384), tmp_path / "framed.csv", "csv")
    assert plain.read_bytes() == framed.read_bytes() and plain.read_bytes().startswith(b"capture,flow_id,")
