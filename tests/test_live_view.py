"""The live view on a real pseudo-terminal (issue 16), rendered by pyte as a terminal would.

watch runs as a subprocess whose stdout and stderr are a pty of 60 or 200 columns; what it
writes goes through pyte's VT emulator, and the screen is checked after every chunk: each
job's line appears at most once (a wrapped line leaves a stale copy at the next redraw),
no line of the live area fills the width, pending jobs show with their queue position, a
job whose server is down says so on its own line, and server notices stay above the area.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyte
import pytest
from workflows import slow_graph

REPO = Path(__file__).resolve().parents[1]
ROWS = 40


class Terminal:
    """A pty of a given size running one command, its output fed to a pyte screen."""

    def __init__(self, args: list[str], columns: int, env: dict[str, str]) -> None:
        self.columns = columns
        self.screen = pyte.Screen(columns, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, columns, 0, 0))
        # A terminal turns "\n" into CR LF; keep that (the default), as a real one does.
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True
        )
        os.close(slave)
        self.master = master
        self.frames = 0
        self.raw = bytearray()

    def rows(self) -> list[str]:
        return [row.rstrip() for row in self.screen.display]

    def pump(self, until, timeout: float, check) -> bool:
        """Feed output to the screen, checking every frame, until ``until(rows)``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the child closed the pty
                    chunk = b""
                if not chunk:
                    return until(self.rows())
                self.raw += chunk
                self.stream.feed(chunk)
                self.frames += 1
                check(self.rows())
            if until(self.rows()):
                return True
        return False

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)


def submit(run_comfyctl, tmp_path: Path, server: str, graph: dict, count: int = 1) -> list[str]:
    wf = tmp_path / f"wf{len(list(tmp_path.glob('wf*.json')))}.json"
    wf.write_text(json.dumps(graph))
    result = run_comfyctl("submit", str(wf), "-s", server, "--count", str(count), "--vary-seed")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("columns", [60, 200])
def test_live_view_fits_redraws_in_place_and_keeps_notices(
    run_comfyctl, emulator_factory, tmp_path, config_path, columns
):
    a, b = emulator_factory(), emulator_factory()
    # Long names: a line that does not fit must be cut, never wrapped.
    config_path.write_text(
        f'[servers.render-box-number-one]\nurl = "{a.url}"\n[servers.gpu-b]\nurl = "{b.url}"\n'
    )
    long = slow_graph(steps=600, seconds=0.05)
    running, *queued = submit(run_comfyctl, tmp_path, "render-box-number-one", long, count=3)
    (other,) = submit(run_comfyctl, tmp_path, "gpu-b", long)
    short = {pid: pid[:8] for pid in (running, *queued, other)}
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "", "LINES": ""}
    env.pop("COLUMNS")
    env.pop("LINES")
    term = Terminal(
        [
            sys.executable,
            "-m",
            "comfyctl",
            "watch",
            running,
            *queued,
            other,
            "--poll-interval",
            "0.3",
        ],
        columns,
        env,
    )

    def area_rows(rows: list[str]) -> list[str]:
        # The live area's lines: a job's short id after its server, never a data line
        # (which starts with the full id) nor a notice (which starts with "comfyctl:").
        return [
            r
            for r in rows
            if any(f" {s} " in r for s in short.values())
            and not r.startswith("comfyctl:")
            and not any(p in r for p in short)
        ]

    notice = "comfyctl: server gpu-b is unreachable"
    notice_seen = False

    def check(rows: list[str]) -> None:
        nonlocal notice_seen
        area = area_rows(rows)
        for pid, sid in short.items():
            copies = [r for r in area if f" {sid} " in r]
            assert len(copies) <= 1, f"{pid} drawn {len(copies)} times:\n" + "\n".join(rows)
        for row in area:
            assert len(row) < columns, f"a line fills the width (it would wrap): {row!r}"
        # Once printed, the notice stays on screen through every redraw.
        shown = any(r.startswith(notice) for r in rows)
        assert shown or not notice_seen, "the notice was erased:\n" + "\n".join(rows)
        notice_seen = shown

    def line_of(rows: list[str], pid: str) -> str:
        return next((r for r in area_rows(rows) if f" {short[pid]} " in r), "")

    try:
        # Pending jobs are shown at once, with their place in the queue.
        assert term.pump(
            lambda rows: (
                "#2 in line" in line_of(rows, queued[1])
                and "#1 in line" in line_of(rows, queued[0])
                and "running" in line_of(rows, running)
                and "%" in line_of(rows, other)
            ),
            30,
            check,
        ), "\n".join(term.rows())
        b.stop()
        assert term.pump(
            lambda rows: (
                "unreachable" in line_of(rows, other) and any(r.startswith(notice) for r in rows)
            ),
            30,
            check,
        ), "\n".join(term.rows())
        # The notice stays above the area through later redraws (check() sees each frame).
        frames = term.frames
        assert term.pump(
            lambda rows: (
                term.frames >= frames + 5
                and "pending" in line_of(rows, queued[0])
                and "running" in line_of(rows, running)
            ),
            30,
            check,
        )
        rows = term.rows()
        assert rows.index(next(r for r in rows if r.startswith(notice))) < rows.index(
            line_of(rows, running)
        )
        term.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        term.pump(lambda rows: term.proc.poll() is not None, 20, check)
        assert term.proc.wait(timeout=20) == 130
        term.pump(lambda rows: False, 0.5, check)
        final = term.rows()
        # The area is gone; the notice and the message naming running and pending jobs stay.
        assert area_rows(final) == [], "\n".join(final)
        assert any(r.startswith(notice) for r in final)
        last = term.raw.decode(errors="replace").rsplit("\x1b[J", 1)[-1]
        text = re.sub(r"\s+", " ", last)
        assert "Interrupted; running:" in text and "pending:" in text, text
        for pid in (running, other):  # other's server is down: it was running last seen
            assert text.index("running:") < text.index(pid) < text.index("pending:")
        for pid in queued:
            assert text.index("pending:") < text.index(pid)
    finally:
        term.close()


def test_plain_lines_when_term_is_dumb(run_comfyctl, emulator, tmp_path):
    (pid,) = submit(run_comfyctl, tmp_path, emulator.url, slow_graph(steps=20, seconds=0.1))
    env = {**os.environ, "TERM": "dumb"}
    term = Terminal(
        [sys.executable, "-m", "comfyctl", "watch", pid, "--poll-interval", "0.3"], 80, env
    )
    raw = bytearray()
    try:
        end = time.monotonic() + 30
        while term.proc.poll() is None and time.monotonic() < end:
            ready, _, _ = select.select([term.master], [], [], 0.1)
            if ready:
                try:
                    raw += os.read(term.master, 65536)
                except OSError:
                    break
        assert term.proc.wait(timeout=10) == 0
    finally:
        term.close()
    assert b"\x1b[" not in raw  # no cursor movement, no colour
    assert raw.decode().splitlines()[-1].startswith(f"{pid}\t")
