"""The ``inspector`` command: parse, call the API, render with rich, exit codes.

Exit codes: 0 success (also for a truncated capture, with a warning), 2 usage errors (missing or
unreadable capture, not a capture, bad option or signature file), 1 failures while working.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from inspector._version import __version__
from inspector.bundled import bundled

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Inspect what video-conferencing clients send: calls, services, telemetry, with evidence.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

SAMPLE_CAPTURE = bundled("captures/sample-call.pcapng")
PROGRESS_MIN_BYTES = 8 << 20  # show a progress bar for captures of 8 MiB and more
#: The interpreter's GIL switch interval for ``analyze`` (Python's default is 5 ms). The threads
#: beside the reading (gzip's inflating, the SHA-256 of a one-core run, the tables' import) each
#: need the GIL only between long calls that release it, and asking for it back while the main
#: thread runs Python cost them up to the whole interval every time: the inflating thread fell
#: behind and the reading waited for its chunks. Measured on the benchmark capture's gzip -1,
#: one worker, alternating runs: 4.35 -> 4.21 s (6 runs), 4.39 -> 4.26 s (8), 4.34 -> 4.17 s
#: (4). The plain capture, with one worker, two, or pinned to one core: unchanged (within
#: 1.5%). Set by the command only: a library caller's process keeps its own.
GIL_SWITCH_S = 0.001


def _fail(message: str, code: int) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(code)


def _version_callback(value: bool) -> None:
    if value:
        from inspector import native

        print(f"inspector {__version__} (dissectors: {native.mode})")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """inspector: which calls happened, with which service, and who received data during them."""


@app.command()
def analyze(
    captures: Optional[list[Path]] = typer.Argument(
        None, help="pcap/pcapng files (gzip allowed). Default: the bundled sample call capture.", show_default=False
    ),
    out: Path = typer.Option(Path("inspector-out"), "--out", "-o", help="Directory for the tables and manifest.json."),
    fmt: str = typer.Option("csv", "--format", "-f", help="Table format: csv, json or parquet."),
    batch_size: int = typer.Option(65536, "--batch-size", min=1, help="Packets per batch (memory/speed only; results never change)."),
    idle_timeout: float = typer.Option(120.0, "--idle-timeout", min=0.001, help="Seconds without packets after which a flow ends."),
    top: int = typer.Option(10, "--top", min=0, help="Flows to show in the terminal table (0: none)."),
    merge: bool = typer.Option(False, "--merge", help="Treat the captures as one timeline (one machine's capture in pieces)."),
    signatures: Optional[list[Path]] = typer.Option(
        None, "--signatures", help="Directory of extra signature files on top of the built-in set (repeatable)."
    ),
    workers: int = typer.Option(
        0,
        "--workers",
        "-w",
        min=0,
        help="Processes (0: one per available core): one capture's dissection is split over them, "
        "several captures are read that many at a time. Results never depend on it.",
    ),
    no_payloads: bool = typer.Option(False, "--flows-only", help="Skip naming, classification and calls: flows and counters only."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No terminal output except warnings and errors."),
) -> None:
    """Analyse captures: flows, sessions, destinations and media tables plus manifest.json in --out."""
    from inspector import prehash

    paths = list(captures or [])
    if not paths and SAMPLE_CAPTURE.is_file():
        paths = [SAMPLE_CAPTURE]
    # Hashed for the manifest from now on, on a core the imports below leave idle.
    prehash.start(paths)
    # This process's own: threads beside the reading wait less for the GIL (GIL_SWITCH_S).
    sys.setswitchinterval(GIL_SWITCH_S)

    from inspector import warmup
    from inspector.errors import CaptureError, InspectorError, SignatureError
    from inspector.export import FORMATS

    if fmt not in FORMATS:
        _fail(f"--format {fmt!r}: use one of {', '.join(FORMATS)}", 2)
    keep_pyarrow_unloaded(fmt)
    if not paths:
        _fail(f"{SAMPLE_CAPTURE}: the bundled sample capture is missing; name a capture to analyse", 2)
    if not quiet:
        # The terminal's modules (~25 ms) are imported beside the packets, not before them.
        warmup.also_import("rich.console", "rich.table")

    import inspector
    from inspector.pipeline import AnalyzeOptions

    options = AnalyzeOptions(
        batch_size=batch_size,
        idle_timeout_s=idle_timeout,
        inspect_payloads=not no_payloads,
        signature_dirs=tuple(signatures or ()),
        merge=merge,
        workers=workers or _available_cores(),
        prepare_flows_csv=fmt == "csv",
    )
    try:
        result = _run_with_progress(inspector, paths, options, quiet)
    except (CaptureError, SignatureError) as e:
        _fail(str(e), 2)
    except InspectorError as e:
        _fail(str(e), 1)
    if result.warnings:
        err = _console(stderr=True)
        for w in result.warnings:
            err.print(f"[yellow]warning:[/] {w}", markup=True)
    console = None if quiet else _console()
    # The answer is printed while a forked process writes flows.csv (Analysis.write).
    answer = None if console is None else (lambda: _render_summary(console, result, top))
    try:
        written = result.write(out, fmt, while_writing=answer)
    except InspectorError as e:
        _fail(str(e), 1)
    except OSError as e:  # a full disk, a directory where a table goes ...
        # A file moved into place (flows.csv) names its destination second.
        _fail(f"{e.filename2 or e.filename or out}: cannot write the tables: {e.strerror or e}", 1)
    if console is not None:
        console.print(f"wrote {', '.join(str(p) for p in written)}")
    global _finished_cleanly
    _finished_cleanly = True


def _available_cores() -> int:
    from inspector.idlecores import usable_cores

    return usable_cores()


def _console(stderr: bool = False):
    """A rich console for the terminal answer (stdout) or warnings (stderr), made when needed:
    a quiet run without warnings never imports rich."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _may_be_terminal(stream) -> bool:
    """False where rich's ``Console.is_terminal`` would be False for ``stream``, told without
    importing rich (~25 ms that would otherwise come before the packets): the stream is no tty
    and neither ``TTY_COMPATIBLE=1`` nor ``FORCE_COLOR`` makes rich treat it as one."""
    import os

    if os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR") is not None:
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _run_with_progress(inspector, paths, options, quiet):
    total = sum(p.stat().st_size for p in paths if p.is_file())
    if quiet or total < PROGRESS_MIN_BYTES or not _may_be_terminal(sys.stderr):
        return inspector.analyze(paths, options, command_line=sys.argv)
    err = _console(stderr=True)
    if not err.is_terminal:
        return inspector.analyze(paths, options, command_line=sys.argv)
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(path: str, done: int, size: int) -> None:
            if path not in tasks:
                tasks[path] = bar.add_task(Path(path).name, total=size)
            bar.update(tasks[path], completed=min(done, size))

        return inspector.analyze(paths, options, progress=progress, command_line=sys.argv)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _render_summary(console, result, top: int) -> None:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text  # capture strings are untrusted: never parse them as markup

    for entry in result.manifest["inputs"]:
        d = entry["decode"]
        console.print(
            f"[bold]{escape(entry['name'])}[/]: {entry['packets']:,} packets read, {d['packets_decoded']:,} decoded, "
            f"{d['packets_skipped']:,} skipped, {entry['flows']:,} flows",
            markup=True,
        )
    if result.manifest["options"]["inspect_payloads"]:
        # One print for every call's line: rich lays out one text once instead of one per call
        # (830 calls: 0.07 s instead of 0.12 s). Into a file or a pipe, a call stays one line
        # (grep finds it whole); on a terminal, lines wrap at words to the window's width.
        console.print(Text("\n".join(result.call_summaries())), soft_wrap=not console.is_terminal)
    if top == 0:
        return
    shown = result.largest_flows(top)
    if shown.empty:
        return
    table = Table(title=f"Top {len(shown)} flows by bytes", show_lines=False)
    for col in ("server", "service", "kind", "proto", "sent", "recv", "secs"):
        table.add_column(col, justify="right" if col in ("sent", "recv", "secs") else "left", overflow="fold")
    for row in shown.itertuples(index=False):
        server = row.server_name or f"{row.server_ip}:{row.server_port}"
        table.add_row(*(Text(str(c)) for c in (
            server,
            row.service or "?",
            row.kind or "",
            row.app_protocol or row.transport,
            _human_bytes(int(row.client_to_server_bytes)),
            _human_bytes(int(row.server_to_client_bytes)),
            f"{row.duration_s:.0f}",
        )))
    console.print(table)


signatures_app = typer.Typer(help="The signature set: list it, check files.", no_args_is_help=True)
app.add_typer(signatures_app, name="signatures")


@signatures_app.command("list")
def signatures_list(
    extra: Optional[list[Path]] = typer.Option(None, "--signatures", help="Extra signature directory (repeatable)."),
) -> None:
    """List every signature: id, kind, category, organisation and what it matches on."""
    from rich.console import Console
    from rich.table import Table

    from inspector.errors import SignatureError
    from inspector.signatures import load_signatures, signature_summary

    try:
        sigs = load_signatures(tuple(extra or ()))
    except SignatureError as e:
        _fail(str(e), 2)
    table = Table(title=f"{len(sigs.ids)} signatures (digest {sigs.digest[:12]})")
    table.add_column("id", no_wrap=True)
    for col in ("kind", "category", "party", "organisation", "domains", "nets", "detectors"):
        table.add_column(col, overflow="fold")
    for r in signature_summary(sigs):
        table.add_row(r.id, r.kind, r.category, r.party, r.organisation, str(r.domains), str(r.networks), r.detectors)
    Console().print(table)


@signatures_app.command("check")
def signatures_check(
    directory: Optional[Path] = typer.Argument(None, help="Directory of signature files (default: the built-in set)."),
) -> None:
    """Validate signature files: schema, vocabularies, references, domains, CIDRs, overlaps."""
    from inspector.errors import SignatureError
    from inspector.signatures import load_signatures

    if directory is not None and not directory.is_dir():
        _fail(f"{directory}: not a directory of signature files", 2)
    try:
        sigs = load_signatures((directory,) if directory is not None else ())
    except SignatureError as e:
        _fail(str(e), 2)
    where = f"built-in set plus {directory}" if directory is not None else "built-in set"
    print(f"ok: {len(sigs.ids)} signatures ({where}), digest {sigs.digest}")


#: Set by a command whose every output is written and closed: the process may then end without
#: the interpreter's teardown (``main``).
_finished_cleanly = False


def main() -> None:
    """Console-script entry point: usage errors from click exit with code 2 already.

    After an analysis that wrote everything, the process ends with ``os._exit`` once stdout and
    stderr are flushed. The interpreter's teardown would free the result, the flow tables and
    every module object by object: 0.13 s after the benchmark capture, for memory the system
    takes back at once anyway. Only that path skips it: the analysis has closed its files (they
    are written in ``with`` blocks), joined its workers and reaped its forked helpers (the
    manifest's digest reaped the hashing process, ``prehash.py``, whose exit handler only stops
    one a failed run left). Every other exit (errors, other commands) is Python's
    usual one. The process is the run's alone, so objects alive at a fork or at the end of a
    paused collector may stay frozen (``gcpause.freeze_at_fork``, ``gcpause.freeze_after_pause``)
    and its allocator may keep freed memory for reuse (``gcpause.reuse_freed_heap``)."""
    from inspector import gcpause

    use_system_allocator_for_arrow()
    use_one_blas_thread()
    gcpause.freeze_at_fork()
    gcpause.freeze_after_pause()
    gcpause.reuse_freed_heap()
    try:
        app()
    except SystemExit as stop:
        if not (_finished_cleanly and stop.code in (0, None)):
            raise
    if _finished_cleanly:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader that closed the pipe early: nothing to keep
                pass
        import os

        os._exit(0)


def use_system_allocator_for_arrow() -> None:
    """Make pandas' Arrow-backed string columns allocate with malloc, unless the user chose a
    pool (``ARROW_DEFAULT_MEMORY_POOL``). Arrow's default pool (mimalloc) keeps freed memory for
    reuse, so the flows table's text stayed resident through the call stage and the CSV writing
    (+34 MiB peak on the benchmark); freed malloc memory goes back to the OS at the stage
    boundaries (``gcpause.return_free_memory``). Set before pyarrow is imported: the pool is
    chosen once, at import."""
    import os

    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def keep_pyarrow_unloaded(fmt: str) -> bool:
    """Keep pandas from loading pyarrow in a run whose tables are not Parquet; True if it did.

    pandas imports pyarrow at its own import whenever it is installed, and then backs string
    columns with Arrow. A CSV or JSON run has no use for it: the same tables come out of
    pandas' Python-backed strings (byte-identical files, tested). Loading it is ~50 ms of
    import and ~30 MiB of Arrow's libraries resident: one process on the 5x benchmark capture
    peaked at 316 MB with it and 271 MB without. Done the documented way, a ``None`` entry in
    ``sys.modules`` (importing pyarrow then raises ImportError, which pandas expects), and only
    while neither pandas nor pyarrow is loaded: a process that already holds them (a program
    using the API, the test suite) gains nothing and keeps its pyarrow. Only for the pandas
    major versions known to treat pyarrow as optional (``PANDAS_WITHOUT_PYARROW``), so that a
    later pandas that needed it would still find it."""
    if fmt == "parquet" or "pandas" in sys.modules or "pyarrow" in sys.modules:
        return False
    if pandas_major_version() not in PANDAS_WITHOUT_PYARROW:
        return False
    sys.modules["pyarrow"] = None  # type: ignore[assignment]
    return True


#: pandas major versions that import pyarrow only if present and work without it (pandas 2.1 to
#: 3.1 checked: PDEP-10's plan to require it was not carried out in 3.0).
PANDAS_WITHOUT_PYARROW = (2, 3)


def pandas_major_version() -> int | None:
    """The installed pandas' major version, read from the ``_version_meson.py`` that its builds
    since 2.1 carry, without importing pandas; None when that cannot be read."""
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec("pandas")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "_version_meson.py").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r'__version__\s*=\s*["\'](\d+)\.', text)
    return int(match.group(1)) if match else None


def use_one_blas_thread() -> None:
    """Start numpy's OpenBLAS with one thread, unless the user set ``OPENBLAS_NUM_THREADS``.

    inspector does no linear algebra: its only BLAS calls are the jitter's dot products of at
    most ``media_stats.JITTER_CHUNK`` (1024) terms, which OpenBLAS computes on one thread
    anyway. Its thread pool, started at numpy's import, still spins before it sleeps: 0.06 s
    of CPU per run on this 2-core machine, taken from the dissect workers. Set before numpy is
    imported: the pool is sized once, at load."""
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


if __name__ == "__main__":
    main()

from inspector.cli_live import live  # noqa: E402  (after the helpers cli_live reuses)

app.command("live")(live)
