"""The inspector command: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inspector import prehash
from inspector.cli import SAMPLE_CAPTURE
from tests import craft as C


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "inspector.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("inspector ")


def test_analyze_shortens_the_gil_switch_interval_of_its_own_process_only(tmp_path):
    from inspector.cli import GIL_SWITCH_S

    cap = C.write_pcap(tmp_path / "a.pcap", [C.ether(C.udp4("10.0.0.1", "10.0.0.2", 40000, 53, b"q" * 12))])
    code = (
        "import sys, inspector\n"
        f"inspector.analyze([{str(cap)!r}])\n"
        "print(sys.getswitchinterval())\n"
        "from inspector import cli\n"
        f"cli.app(['analyze', {str(cap)!r}, '-q', '--out', {str(tmp_path / 'out')!r}], standalone_mode=False)\n"
        "print(sys.getswitchinterval())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    library, command = (float(v) for v in r.stdout.split())
    assert library == 0.005 and command == GIL_SWITCH_S  # a library caller keeps Python's default


def test_analyze_writes_flows_and_manifest(tmp_path):
    cap = C.write_pcap(tmp_path / "a.pcap", [C.ether(C.udp4("10.0.0.1", "10.0.0.2", 40000, 53, b"q" * 12))])
    r = run("analyze", cap, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "flows.csv").read_text().startswith("capture,flow_id,transport,")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"][0]["packets"] == 1
    assert "a.pcap" in r.stdout  # the terminal summary names the capture
    # The process ends without the interpreter's teardown (cli.main): all of stdout still came.
    assert r.stdout.rstrip().endswith("manifest.json") and r.stderr == ""


_EARLY_HASH_DRIVER = """
import sys
from inspector import cli, prehash
real_start, real_claim = prehash.start, prehash.claim
def start(paths, *args):
    real_start(paths, *args)
    if prehash._current is not None:
        print("hashing pid", prehash._current.pid, flush=True)
def claim(st):
    early = real_claim(st)
    print("claimed", early is not None, flush=True)
    return early
prehash.start, prehash.claim = start, claim
sys.argv = ["inspector", *sys.argv[1:]]
cli.main()
"""


def _gone_soon(pid: int) -> bool:
    import os
    import time

    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


_ONE_CORE = prehash._usable_cores() < 2


@pytest.mark.skipif(_ONE_CORE, reason="one usable core: the reader hashes the capture itself (prehash._usable_cores)")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_manifest_digest_comes_from_the_process_begun_at_the_start(tmp_path, workers):
    """The command forks the capture's hashing process before its imports (prehash.py); the
    reader takes its digest, which is the file's; the process is gone when the command is."""
    import hashlib

    cap = C.write_pcap(tmp_path / "a.pcap", [C.ether(C.udp4("10.0.0.1", "10.0.0.2", 40000, 53, b"q" * 12))] * 3)
    r = subprocess.run(
        [sys.executable, "-c", _EARLY_HASH_DRIVER, "analyze", str(cap), "-w", workers, "-q", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("hashing pid ") and "claimed True" in lines, r.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"][0]["sha256"] == hashlib.sha256(open(cap, "rb").read()).hexdigest()
    assert _gone_soon(int(lines[0].split()[-1]))


@pytest.mark.skipif(_ONE_CORE, reason="one usable core: no hashing process is begun (prehash._usable_cores)")
def test_a_failed_run_leaves_no_hashing_process(tmp_path):
    bad = tmp_path / "x.pcap"
    bad.write_text("not a capture at all\n" * 10)
    r = subprocess.run(
        [sys.executable, "-c", _EARLY_HASH_DRIVER, "analyze", str(bad), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "not a" in r.stderr.lower()
    assert r.stdout.startswith("hashing pid "), r.stdout
    assert _gone_soon(int(r.stdout.split()[2]))


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "directory"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_text("not a capture at all\n" * 10), p)[1], "not a"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, make, needle):
    path = make(tmp_path / "x.pcap")
    r = run("analyze", path, "--out", tmp_path / "out")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0] and needle in lines[0].lower()
    assert "Traceback" not in r.stderr


def test_a_bad_capture_among_several_read_at_once_is_one_line_exit_2(tmp_path):
    good = C.write_pcap(tmp_path / "a.pcap", [C.ether(C.udp4("10.0.0.1", "10.0.0.2", 40000, 53, b"q" * 12))])
    bad = tmp_path / "b.pcap"
    bad.write_text("not a capture at all\n" * 10)
    r = run("analyze", good, bad, good, "--workers", "2", "--out", tmp_path / "out")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and "not a" in lines[0].lower(), r.stderr


def test_several_captures_with_two_workers_write_every_table_and_nothing_to_stderr(tmp_path):
    caps = [
        C.write_pcap(tmp_path / f"{k}.pcap", [C.ether(C.udp4("10.0.0.1", "10.0.0.2", 40000 + k, 53, b"q" * 12))])
        for k in range(6)
    ]
    r = run("analyze", *caps, "--workers", "2", "--out", tmp_path / "out")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [entry["name"] for entry in manifest["inputs"]] == [f"{k}.pcap" for k in range(6)]
    assert all(len(entry["sha256"]) == 64 for entry in manifest["inputs"])
    flows = (tmp_path / "out" / "flows.csv").read_text().splitlines()
    assert len(flows) == 7 and [line.split(",")[0] for line in flows[1:]] == [f"{k}.pcap" for k in range(6)]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("table", ["flows.csv", "destinations.csv"])
def test_an_output_that_cannot_be_written_is_one_line_exit_1(tmp_path, workers, table):
    """A table whose file cannot be written (here a directory in its place; a full disk alike)
    is an error naming what failed, whichever process writes the table."""
    (tmp_path / "out" / table).mkdir(parents=True)
    r = run("analyze", SAMPLE_CAPTURE, "--out", tmp_path / "out", "-w", workers, "-q")
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{tmp_path / 'out' / table}: cannot write the tables: Is a directory" in lines[0]
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".part")]


def test_truncated_capture_warns_and_exits_0(tmp_path):
    data = C.pcap_bytes([C.ether(C.udp4("10.0.0.1", "10.0.0.2", 40000, 53, b"q" * 40))] * 3)
    cap = tmp_path / "cut.pcap"
    cap.write_bytes(data[:-10])
    r = run("analyze", cap, "--out", tmp_path / "out")
    assert r.returncode == 0
    assert "warning" in r.stderr and "truncated" in r.stderr
    assert (tmp_path / "out" / "flows.csv").exists()


def test_bad_format_option_is_a_usage_error(tmp_path):
    cap = C.write_pcap(tmp_path / "a.pcap", [C.ether(C.udp4("10.0.0.1", "10.0.0.2", 1, 2, b""))])
    r = run("analyze", cap, "--format", "xlsx", "--out", tmp_path / "o")
    assert r.returncode == 2 and "xlsx" in r.stderr


def test_unknown_option_exits_2():
    assert run("analyze", "--no-such-option").returncode == 2


@pytest.mark.skipif(not SAMPLE_CAPTURE.is_file(), reason="the bundled sample capture is not generated yet")
def test_no_capture_runs_on_the_bundled_sample(tmp_path):
    r = run("analyze", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"][0]["name"] == SAMPLE_CAPTURE.name
    assert manifest["inputs"][0]["packets"] > 100


USER_SIGNATURE = '''schema = 1
id = "acme-beacon"
name = "ACME beacon"
organisation = "ACME Analytics Ltd."
kind = "telemetry"
category = "analytics"
party = "third"
references = ["https://example.org/acme (test fixture)"]
updated = 2026-11-25

[[endpoints]]
role = "telemetry"
domains = ["beacon.acme-analytics.example"]
'''


def test_signatures_check_and_list(tmp_path):
    r = run("signatures", "check")
    assert r.returncode == 0 and r.stdout.startswith("ok: ")
    (tmp_path / "acme-beacon.toml").write_text(USER_SIGNATURE)
    r = run("signatures", "check", tmp_path)
    assert r.returncode == 0 and "plus" in r.stdout
    r = run("signatures", "list", "--signatures", tmp_path)
    assert r.returncode == 0 and "acme-beacon" in r.stdout


def test_broken_signature_file_is_one_line_naming_file_and_key(tmp_path):
    (tmp_path / "acme-beacon.toml").write_text(USER_SIGNATURE.replace('kind = "telemetry"', 'kind = "spyware"'))
    r = run("signatures", "check", tmp_path)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "acme-beacon.toml" in lines[0] and "kind" in lines[0]
    cap = C.write_pcap(tmp_path / "a.pcap", [C.ether(C.udp4("10.0.0.1", "10.0.0.2", 40000, 53, b"q" * 12))])
    r = run("analyze", cap, "--signatures", tmp_path, "--out", tmp_path / "out")
    assert r.returncode == 2 and "acme-beacon.toml" in r.stderr


def test_user_signature_classifies_a_flow(tmp_path):
    from tests.dissect.test_tls import client_hello, record, sni_extension

    sigs = tmp_path / "sigs"
    sigs.mkdir()
    (sigs / "acme-beacon.toml").write_text(USER_SIGNATURE)
    hello = record(client_hello(sni_extension(b"beacon.acme-analytics.example")))
    a, b = "10.0.0.1", "192.0.2.7"
    packets = [
        C.ether(C.tcp4(a, b, 40000, 443, "S")),
        C.ether(C.tcp4(b, a, 443, 40000, "SA")),
        C.ether(C.tcp4(a, b, 40000, 443, "PA", hello, seq=1)),
    ]
    cap = C.write_pcap(tmp_path / "beacon.pcap", packets)
    r = run("analyze", cap, "--signatures", sigs, "--out", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    import pandas as pd

    flows = pd.read_csv(tmp_path / "out" / "flows.csv", keep_default_na=False)
    row = flows.iloc[0]
    assert (row.server_name, row.name_source, row.service, row.kind) == (
        "beacon.acme-analytics.example", "sni", "acme-beacon", "telemetry")
    assert row.evidence.startswith("sni:beacon.acme-analytics.example")
    # The terminal answer names the destination with the user signature's display name, and,
    # written into a pipe, keeps the line whole (not wrapped at 80 columns).
    r = run("analyze", cap, "--signatures", sigs, "--out", tmp_path / "out2", "--top", "0")
    assert r.returncode == 0, r.stderr
    (outside,) = [line for line in r.stdout.splitlines() if line.startswith("Outside calls")]
    assert outside.startswith("Outside calls (beacon.pcap): data went to: ACME beacon beacon.acme-analytics.example ")
    assert outside.endswith("(third-party telemetry: analytics)")


def run_with_library_default(setter: str, variable: str, preset: str | None, probe: str) -> str:
    """stdout of a fresh interpreter that calls ``inspector.cli.<setter>`` and then ``probe``,
    with ``variable`` unset or set to ``preset`` by the user."""
    import os

    env = {k: v for k, v in os.environ.items() if k != variable}
    if preset is not None:
        env[variable] = preset
    code = f"from inspector.cli import {setter}; {setter}(); {probe}"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize(("preset", "expected"), [(None, "system"), ("mimalloc", "mimalloc")])
def test_the_command_gives_arrow_the_system_allocator_unless_the_user_chose_one(preset, expected):
    """Arrow's own pool keeps freed memory resident; the command switches to malloc (whose free
    memory the stage boundaries return) but never overrides an explicit choice."""
    probe = "import pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    assert run_with_library_default("use_system_allocator_for_arrow", "ARROW_DEFAULT_MEMORY_POOL", preset, probe) == expected


@pytest.mark.parametrize(("preset", "expected"), [(None, "1 1"), ("2", "2")])
def test_the_command_starts_numpy_without_blas_threads_unless_the_user_chose_some(preset, expected):
    """OpenBLAS's pool spins on the cores the dissect workers need; the command asks for one
    thread (no pool: the process keeps its single thread) but keeps an explicit choice."""
    probe = "import os, numpy; print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')))"
    out = run_with_library_default("use_one_blas_thread", "OPENBLAS_NUM_THREADS", preset, probe)
    assert (out if preset is None else out.split()[0]) == expected


def _arrow_loaded_by(*args) -> tuple[bool, subprocess.CompletedProcess]:
    """(whether Arrow's core library was imported, the run) for ``inspector <args>``, read from
    ``-X importtime`` (a blocked import shows only the bare ``pyarrow`` name, never
    ``pyarrow.lib``)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "inspector.cli", *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    return any(line.split("|")[-1].strip() == "pyarrow.lib" for line in r.stderr.splitlines()), r


def test_a_csv_run_leaves_pyarrow_unloaded_and_writes_the_same_tables(tmp_path):
    """pandas would load pyarrow (and back its strings with Arrow) at import; a CSV run does not
    need it, and its tables are byte-identical to those of a process that has pyarrow loaded."""
    import pyarrow  # noqa: F401 - this process: pandas with Arrow strings

    import inspector

    loaded, r = _arrow_loaded_by("analyze", SAMPLE_CAPTURE, "-o", tmp_path / "cli", "-q", "-w", "1")
    assert r.returncode == 0, r.stderr
    assert not loaded
    inspector.analyze([SAMPLE_CAPTURE]).write(tmp_path / "api", "csv")
    for table in ("flows", "sessions", "destinations", "media"):
        assert (tmp_path / "cli" / f"{table}.csv").read_bytes() == (tmp_path / "api" / f"{table}.csv").read_bytes(), table


def test_a_parquet_run_loads_pyarrow(tmp_path):
    loaded, r = _arrow_loaded_by("analyze", SAMPLE_CAPTURE, "-o", tmp_path, "-q", "-f", "parquet")
    assert r.returncode == 0, r.stderr
    assert loaded
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "flows.parquet")) > 0


def test_keeping_pyarrow_unloaded_is_a_no_op_once_pandas_is_loaded():
    """A process that already holds pandas (a program using the API, this test run) keeps its
    pyarrow: blocking it now would save nothing and break a later Parquet write."""
    import pandas  # noqa: F401

    from inspector.cli import keep_pyarrow_unloaded

    assert keep_pyarrow_unloaded("csv") is False
    assert sys.modules.get("pyarrow") is not None


def test_the_pandas_major_version_is_read_without_importing_pandas():
    """``keep_pyarrow_unloaded`` acts only for pandas versions known to work without pyarrow; the
    version is read from pandas' files, in a fresh interpreter that then has no pandas loaded."""
    import pandas as pd

    code = "import sys; from inspector.cli import pandas_major_version as v; print(v(), 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [pd.__version__.split(".")[0], "False"]


def test_the_console_entry_point_lets_forked_helpers_freeze_its_objects():
    """``cli.main`` owns its process (it ends with the run), so it turns on
    ``gcpause.freeze_at_fork`` and ``gcpause.freeze_after_pause``; importing the package does
    not."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from inspector import cli, gcpause\n"
        "before = (gcpause._freeze_at_fork, gcpause._freeze_after_pause)\n"
        "sys.argv = ['inspector', '--version']\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(*before, gcpause._freeze_at_fork, gcpause._freeze_after_pause, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.split() == ["False", "False", "True", "True"], done.stderr


@pytest.mark.parametrize(
    "env",
    [{}, {"FORCE_COLOR": "1"}, {"FORCE_COLOR": ""}, {"TTY_COMPATIBLE": "1"}, {"TTY_COMPATIBLE": "0"}],
)
def test_a_stream_rich_calls_a_terminal_may_be_one(monkeypatch, env):
    """The progress bar's check before importing rich never says no where rich says yes."""
    import os

    from rich.console import Console

    from inspector.cli import _may_be_terminal

    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    primary, secondary = os.openpty()
    read_end, write_end = os.pipe()
    with os.fdopen(secondary, "w") as tty, os.fdopen(write_end, "w") as pipe, os.fdopen(primary), os.fdopen(read_end):
        closed = open(os.devnull, "w")
        closed.close()
        for stream in (tty, pipe, closed, object()):
            if Console(file=stream).is_terminal:
                assert _may_be_terminal(stream), (env, stream)
        if not env:  # plain streams: a pipe is none, a pseudo-terminal is one
            assert not _may_be_terminal(pipe) and not Console(file=pipe).is_terminal
            assert _may_be_terminal(tty) and Console(file=tty).is_terminal
