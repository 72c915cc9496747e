"""The live progress area on a terminal: bars above, data lines in between, fits the screen."""

from __future__ import annotations

import io

import pytest

from comfyctl.render import LiveArea, table


def job(n: int, status: str, percent: float = 0.0) -> dict:
    return {
        "prompt_id": f"{n:08d}-0000",
        "server": "gpu1",
        "status": status,
        "progress": {"percent": percent, "node": "2"},
    }


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


def test_a_job_found_under_another_id_stays_one_row() -> None:
    """A crashed submit's job that an older server runs under an id of its own is the same
    job (the same client_id): one row, which leaves when the job ends."""
    stream = io.StringIO()
    area = LiveArea(stream, color=False)
    record = {**job(1, "submitting"), "client_id": "c1"}
    area.update(record, force=True)
    record.update(prompt_id="99999999-0000", status="running")
    area.update(record, force=True)
    [row] = last_frame(stream)
    assert "99999999 running" in row
    record["status"] = "success"
    area.update(record, force=True)
    assert last_frame(stream) == []


@pytest.mark.parametrize("width", [20, 60, 200])
def test_every_line_is_cut_to_the_width_and_colour_does_not_count(width: int) -> None:
    area = LiveArea(io.StringIO(), color=True)
    for status in ("running", "pending", "submitting"):
        record = {
            "prompt_id": "3f2c9a1e-0000",
            "server": "a-very-long-server-name-indeed",
            "status": status,
            "progress": {"percent": 52.25, "node": "12345678"},
        }
        area.positions[record["prompt_id"]] = 3
        line = area.line(record, width)
        visible = line.replace("\x1b[36m", "").replace("\x1b[0m", "")
        assert len(visible) <= width - 1
        assert visible.startswith("a-very-long-ser~"[: width - 1])
        if width >= 60:
            assert ("\x1b[36mrunning" in line) == (status == "running")  # coloured status
    area.server_state("a-very-long-server-name-indeed", False, "refused")
    assert area.line(record, 60).endswith("unreachable (refused)")


def test_pending_jobs_show_their_place_in_the_queue_and_come_after_running_ones() -> None:
    stream = io.StringIO()
    area = LiveArea(stream, color=False)
    area.update(job(1, "pending"), force=True)
    area.queue_position(job(1, "pending"), 2)
    area.update(job(2, "running", 10.0), force=True)
    frame = last_frame(stream)
    assert "00000002 running" in frame[0]
    assert frame[1].endswith("pending    queued, #2 in line")


def test_a_table_aligns_columns_by_what_the_terminal_shows() -> None:
    # Colour codes take no column, a CJK character takes two, a header gets two spare
    # columns, padding never trails a line, and a multi-line cell stays on its row.
    red = "\x1b[31merror\x1b[0m"
    text = table(("id", "label", "status"), [["abc", "日本", red], ["a", "two\nlines", "ok"]])
    assert text.splitlines() == [
        "id    label      status",
        "----  ---------  --------",
        f"abc   日本       {red}",
        "a     two lines  ok",
    ]


def test_an_empty_table_still_names_its_columns() -> None:
    assert table(("server", "url"), []) == "server    url\n--------  -----"


@pytest.mark.parametrize(
    "env, size", [({"COLUMNS": "100", "LINES": "30"}, (100, 30)), ({}, (80, 24))]
)
def test_a_pty_of_no_size_falls_back_to_columns_and_lines_then_80x24(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], size: tuple[int, int]
) -> None:
    """A pty nobody set a window size on (pty.fork, some CI runners) reports 0x0: the area
    then takes COLUMNS/LINES as shutil.get_terminal_size does, not one column per line."""
    import os
    import pty

    from comfyctl.render import terminal_size

    for name in ("COLUMNS", "LINES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    master, slave = pty.openpty()
    try:
        assert os.get_terminal_size(slave) == (0, 0)
        with open(slave, "w", closefd=False) as stream:
            assert tuple(terminal_size(stream)) == size
            area = LiveArea(stream, color=False)
            line = area.line(job(1, "running", 50.0), terminal_size(stream).columns)
            assert "50.00%" in line and len(line) < size[0]
    finally:
        os.close(master)
        os.close(slave)
