"""Formula-safe CSV: hostile names read back as the intended text, numbers stay numbers."""

from __future__ import annotations

import pandas as pd

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

    from inspector.export import TIME_FORMAT, _iso_utc

    aware = pd.Series(pd.to_datetime([0, 1_700_000_000_123_456_789, None], unit="ns", utc=True))
    assert list(_iso_utc(aware)) == ["1970-01-01T00:00:00.000000Z", "2023-11-14T22:13:20.123456Z", ""]
    assert list(_iso_utc(aware)) == list(aware.dt.strftime(TIME_FORMAT).fillna(""))
    paris = aware.dt.tz_convert("Europe/Paris")  # another zone: written in UTC all the same
    assert list(_iso_utc(paris)) == list(_iso_utc(aware))
    naive = pd.Series(pd.to_datetime([1_700_000_000_999_999_999, None], unit="ns"))
    assert list(_iso_utc(naive)) == ["2023-11-14T22:13:20.999999Z", ""]
