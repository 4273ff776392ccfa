"""flows.csv formatted in a forked process from the end of the reading, its session ids spliced
in once the call stage has found them.

A run with several processes ends in one (``api._build_tables``): the cross-flow labels, the call
stage (sessions, media; the destinations in a forked process), then the tables written. The
flows table is complete once its labels are decided, before the call stage begins; only its
``session_id`` column waits for the calls. ``EarlyFlowsCsv.start`` forks a process that formats
every row then, with a mark in place of the session id, into a scratch file, while the calls are
built here on the other core (idle until then: the dissect workers have stopped).
``EarlyFlowsCsv.send`` gives it every flow's session id (codes into the session texts,
``summarize.FinishedFlows.session_codes``) and a file beside flows.csv; it writes the header and
each slice of rows with the marks replaced by the session cells, the bytes
``export.write_plain_csv`` writes, and ``EarlyFlowsCsv.finish`` moves that file to flows.csv.

Benchmark capture (59.5 k flows, 2 cores): the formatting, ~0.3 s of CPU, no longer follows the
call stage, which is ~0.35 s here.

Weakness: the mark is a NUL character, which a cell may hold (a name read from a capture); a
slice whose text holds more marks than rows is formatted again with its session ids, so the
file is right, only slower to write.
"""

from __future__ import annotations

import os
import pickle
import secrets
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np

from inspector import forked
from inspector.export import plain_cells, plain_csv_header, plain_csv_rows
from inspector.niceness import lower_priority
from inspector.summarize import FinishedFlows, plain_chunks_of

#: Rows per slice formatted at once (a slice's cells are the largest thing the process holds).
SLICE_ROWS = 4096
#: What stands for a row's session_id cell until the calls are known.
MARK = "\x00"
#: How much lower the formatting process runs than the run's own (``niceness.py``). Its rows
#: are needed only once the other tables are written, while the call stage beside it is the
#: run's critical path, and so is the destinations process it waits for. Measured on the
#: benchmark capture, two workers, alternating runs: 2.755 s at equal priority, 2.728 s at +10
#: and 2.722 s at +19 (12 runs each; 2.901 against 2.845 s in a busier hour). +10, so that the
#: input's hashing (``capture.files.HASH_NICENESS``, 19) still comes last.
#: Weakness: on a machine busy with other work the formatting gets less of it, and the run's
#: end may wait for flows.csv.
FORMAT_NICENESS = 10
_LENGTH = struct.Struct("<Q")


class EarlyFlowsCsv:
    """flows.csv's rows being formatted in a forked process (module docstring); ``finish``
    writes the file, ``discard`` stops the process (a run that writes flows.csv otherwise)."""

    def __init__(self, job: forked.Forked, command_fd: int) -> None:
        self.job = job
        self.command_fd = command_fd
        self._sender: threading.Thread | None = None
        #: (the file the process writes, beside flows.csv; flows.csv) once ``send`` was called.
        self._paths: tuple[Path, Path] | None = None

    @classmethod
    def start(cls, flows: FinishedFlows) -> EarlyFlowsCsv | None:
        """Fork the process that formats ``flows`` (its labels decided, its session ids not
        yet); None where no process can be forked (the caller writes flows.csv itself)."""
        read_fd, write_fd = os.pipe()
        job = forked.start("flows.csv", _format_rows, flows, read_fd, write_fd)
        os.close(read_fd)
        if job is None:
            os.close(write_fd)
            return None
        return cls(job, write_fd)

    def send(self, path: Path, flows: FinishedFlows) -> None:
        """Give the process every flow's session id and a file beside flows.csv (``path``) to
        write; ``finish`` puts it in flows.csv's place, so a failed run leaves no half-written
        flows.csv. The message goes from a thread: the process reads it only once its rows are
        formatted, and a pipe holds 64 KiB."""
        # A fresh name the process creates itself (exclusively), so that the file gets the
        # permissions any new file gets here, as flows.csv written directly would.
        part = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.part"
        self._paths = (part, path)
        blob = pickle.dumps((str(part), flows.session_codes()), protocol=pickle.HIGHEST_PROTOCOL)
        self._sender = threading.Thread(target=self._write_command, args=(_LENGTH.pack(len(blob)) + blob,), daemon=True)
        self._sender.start()

    def _write_command(self, message: bytes) -> None:
        try:
            forked.write_all(self.command_fd, message)
        except OSError:
            pass  # the process is gone: ``finish`` reports it
        finally:
            os.close(self.command_fd)

    def finish(self) -> None:
        """Wait until the process has written the file and move it to flows.csv (``send``
        first); raises what the process raised, and then leaves no part behind."""
        assert self._paths is not None, "send() comes first"
        part, path = self._paths
        try:
            self.job.result()
            os.replace(part, path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        finally:
            if self._sender is not None:
                self._sender.join()

    def discard(self) -> None:
        """Stop the process and remove what it wrote; flows.csv is left to the caller. Safe to
        call again, and after ``finish``, as ``forked.Forked.discard`` is."""
        self.job.discard()
        if self._sender is None:
            if self.command_fd >= 0:  # closed once: a second close could hit a reused number
                os.close(self.command_fd)
                self.command_fd = -1
        else:
            self._sender.join()
        if self._paths is not None:
            self._paths[0].unlink(missing_ok=True)


def _format_rows(flows: FinishedFlows, read_fd: int, write_fd: int) -> int | None:
    """In the forked process: format the rows, wait for the command, write flows.csv; the rows
    written (None when the parent sent no command)."""
    os.close(write_fd)  # the parent's end: once it closes, a read here ends
    lower_priority(FORMAT_NICENESS)
    slices = list(flows.slices(SLICE_ROWS))
    formatted: dict[int, tuple] = {}
    lengths: list[int] = []
    header = ""
    # The session_id column as a text column whose every row holds the mark (a text cell as
    # the CSV has it: a NUL needs neither quotes nor the formula prefix).
    marks = np.array([MARK], dtype=object)
    with tempfile.TemporaryFile(prefix="inspector-flows-") as scratch:
        for number, ((_, start, stop), columns) in enumerate(zip(slices, plain_chunks_of(slices))):
            if number == 0:
                header = plain_csv_header(columns)
            marked = [
                (column[0], "text", (marks, np.zeros(stop - start, dtype=np.intp)))
                if column[0] == "session_id"
                else column
                for column in columns
            ]
            encoded = plain_csv_rows(marked, formatted).encode("utf-8")
            scratch.write(encoded)
            lengths.append(len(encoded))
        command = _read_command(read_fd)
        os.close(read_fd)
        if command is None:
            return None
        path, session_codes = command
        flows.set_session_codes(session_codes)
        scratch.seek(0)
        written = 0
        with open(path, "x", encoding="utf-8", newline="") as fh:
            fh.write(header)
            for (part, start, stop), length in zip(slices, lengths):
                text = scratch.read(length).decode("utf-8")
                if part is None or stop == start:
                    continue
                session_cells = plain_cells(*part.session_id_column(start, stop), formatted)
                pieces = text.split(MARK)
                if len(pieces) != len(session_cells) + 1:  # a cell holds the mark itself
                    fh.write(plain_csv_rows(part.plain_columns_of(start, stop), formatted))
                else:
                    spliced = [""] * (2 * len(session_cells) + 1)
                    spliced[0::2] = pieces
                    spliced[1::2] = session_cells
                    fh.write("".join(spliced))
                written += stop - start
    return written


def _read_command(fd: int) -> tuple[str, list] | None:
    """The parent's (path, session codes), or None once its end closed without one."""
    head = forked.read_exactly(fd, _LENGTH.size)
    if head is None:
        return None
    blob = forked.read_exactly(fd, _LENGTH.unpack(head)[0])
    return None if blob is None else pickle.loads(blob)
