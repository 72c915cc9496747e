"""The live progress area on a terminal: bars above, data lines in between, fits the screen."""

from __future__ import annotations

import io

import pytest

from comfyctl.render import LiveArea


def job(n: int, status: str, percent: float = 0.0) -> dict:
    return {"prompt_id": f"{n:08d}-0000", "server": "gpu1", "status": status,
            "progress": {"percent": percent, "node": "2"}}


def last_frame(stream: io.StringIO) -> list[str]:
    return stream.getvalue().split("\x1b[J")[-1].splitlines()


def test_the_area_fits_the_terminal_running_jobs_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINES", "10")
    stream = io.StringIO()
    area = LiveArea(stream, color=False)
    for n in range(30):
        area.update(job(n, "running" if n == 20 else "pending"), force=True)
    frame = last_frame(stream)
    assert len(frame) == 8
    assert "00000020 running" in frame[0]
    assert frame[-1] == "... and 23 more job(s)"


def test_finished_jobs_leave_the_area_and_lines_print_above_it() -> None:
    stream, out = io.StringIO(), io.StringIO()
    area = LiveArea(stream, color=False)
    area.update(job(1, "running", 52.25), force=True)
    assert "52.25%" in last_frame(stream)[0]
    area.print_above("data line", out)
    assert out.getvalue() == "data line\n"
    area.update(job(1, "success"), force=True)
    assert last_frame(stream) == []
