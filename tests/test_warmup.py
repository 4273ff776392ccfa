"""pandas is imported on a second thread while packets are read (warmup.py), never on the packet
path itself, and never across a fork."""

from __future__ import annotations

import subprocess
import sys

from tests import craft as C


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_packet_path_does_not_import_pandas_and_the_reading_starts_its_import(tmp_path):
    cap = C.write_pcap(tmp_path / "a.pcap", [C.ether(C.udp4("10.0.0.1", "10.0.0.2", 40000, 53, b"q" * 12))])
    code = f"""
import sys
import inspector.api, inspector.cli, inspector.parallel, inspector.pipeline
print("pandas" in sys.modules)
from inspector import pipeline, warmup
from inspector.api import _collectors, _labeller, _payload_stage, _signature_set
options = pipeline.AnalyzeOptions()
result = pipeline.process_capture({str(cap)!r}, options, None, _payload_stage(options), _collectors(options), _labeller(_signature_set(options)))
warmup.wait()
print(result.decode.packets_decoded, "pandas" in sys.modules, hasattr(sys.modules["pandas"], "DataFrame"))
"""
    assert run_python(code).splitlines() == ["False", "1 True True"]


def test_a_fork_waits_for_the_import_so_the_child_gets_all_of_pandas():
    code = """
import os, sys
from inspector import warmup
warmup.start()
pid = os.fork()
if pid == 0:  # the child: the import finished before the fork, so it is whole here
    os._exit(0 if hasattr(sys.modules.get("pandas"), "DataFrame") else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    assert run_python(code) == "0"


def test_start_is_once_and_a_no_op_when_pandas_is_there():
    code = """
import sys, threading
import pandas
from inspector import warmup
warmup.start()
print(warmup._thread is None, threading.active_count())
"""
    assert run_python(code) == "True 1"


def test_the_command_imports_rich_beside_the_packets_or_not_at_all_when_quiet(tmp_path):
    """A quiet run without warnings never imports rich; one that prints has the warm-up thread
    import its modules (``warmup.also_import``), not the start before the packets."""
    cap = C.write_pcap(tmp_path / "a.pcap", [C.ether(C.udp4("10.0.0.1", "10.0.0.2", 40000, 53, b"q" * 12))])
    code = f"""
import sys
from inspector import cli, warmup
seen = []
real_import = warmup._import
warmup._import = lambda: (seen.append(("rich.console" in sys.modules)), real_import())
sys.argv = ["inspector", "analyze", {str(cap)!r}, "-o", {str(tmp_path / "out")!r}, "-w", "1"] + sys.argv[1:]
try:
    cli.app()
except SystemExit:
    pass
print(seen, list(warmup.MODULES), "rich.console" in sys.modules, file=sys.stderr)
"""
    for args, modules, rich_loaded in (
        (["-q"], ["pandas"], False),
        ([], ["pandas", "rich.console", "rich.table"], True),
    ):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip().splitlines()[-1] == f"[False] {modules} {rich_loaded}"
