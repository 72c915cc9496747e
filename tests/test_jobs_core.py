"""The jobs service (comfyctl/jobs.py) and the line between it and the commands (issue 13):
commands parse, call the core and render; the network, threads and the ledger's
read-modify-write live below them."""

from __future__ import annotations

import ast
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from comfyctl import jobs
from comfyctl.ledger import Ledger
from comfyctl.records import Observation, new_record

COMMANDS_DIR = Path(__file__).resolve().parent.parent / "comfyctl" / "commands"
#: What only the core may use: the network and concurrency.
FORBIDDEN = (
    "requests",
    "websocket",
    "concurrent",
    "threading",
    "multiprocessing",
    "socket",
    "urllib3",
    "http",
)


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("path", sorted(COMMANDS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_commands_use_no_network_and_no_threads(path):
    used = {
        name
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN or name.startswith("comfyctl.ws")
    }
    assert not used, f"{path.name} imports {sorted(used)}: that belongs in the core"
    text = path.read_text(encoding="utf-8")
    assert "ThreadPoolExecutor" not in text and "Thread(" not in text


class Listener:
    """A loopback port that counts the connections made to it (and answers none)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.sock.settimeout(0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def listener():
    found = Listener()
    yield found
    found.close()


def put_records(ledger_path: Path, url: str) -> tuple[str, str]:
    """A running job and a write-ahead record whose submitter is gone, both on ``url``."""
    ledger = Ledger(ledger_path)
    running = new_record("11111111-0000-4000-8000-000000000001", "x", url, "c1", None)
    running["status"] = "running"
    orphan = new_record("11111111-0000-4000-8000-000000000002", "x", url, "c2", None)
    orphan["submitter"] = {"finished": True}  # gave up: the next command would settle it
    with ledger.transaction() as tasks:
        tasks.put(running)
        tasks.put(orphan)
    return running["prompt_id"], orphan["prompt_id"]


def test_history_no_refresh_makes_no_request(listener, ledger_path, invoke):
    running, _ = put_records(ledger_path, listener.url)
    for args in (
        ("history", running, "--no-refresh"),
        ("history", "--no-refresh"),
        ("history", "--no-refresh", "--json"),
        # A list's default is no refresh: a crashed submit's record is shown as it is,
        # not settled by asking its server (which may hang for its whole timeout).
        ("history",),
        ("history", "--status", "pending"),
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.stderr)
        assert listener.accepted == 0, args
    # The same one id with refresh (the default) does ask: the count above can move.
    invoke("history", running)
    assert listener.accepted > 0


def test_apply_observations_is_one_transaction_and_honours_when(ledger_path):
    url = "http://127.0.0.1:9"
    running, orphan = put_records(ledger_path, url)
    ledger = Ledger(ledger_path)
    changed = jobs.apply_observations(
        ledger,
        [
            Observation("cancelled", running, url),
            Observation("queued", orphan, url, number=3),
            Observation("cancelled", "not-in-the-ledger", url),
            Observation("queued", running, "http://127.0.0.1:10"),  # another server: ignored
        ],
        when=lambda r: r["prompt_id"] == running,
    )
    assert set(changed) == {running}
    stored = ledger.load()
    assert stored[running]["status"] == "cancelled"
    assert stored[orphan]["status"] == "submitting"  # refused by when


def test_refresh_is_bounded_and_reports_a_silent_server(ledger_path):
    hung = socket.socket()  # accepts (the backlog) and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(4)
    url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    try:
        running, _ = put_records(ledger_path, url)
        ledger = Ledger(ledger_path)
        record = ledger.load()[running]
        from comfyctl.client import ServerClient
        from comfyctl.config import ServerSpec

        spec = ServerSpec(name="x", url=url, configured=False, timeout=30, connect_timeout=30)
        heard: list[str] = []
        out = jobs.refresh(
            ledger, [record], lambda r: ServerClient(spec), heard.append, deadline=0.5
        )
        assert out[0]["status"] == "running"  # the ledger's view, unchanged
        assert len(heard) == 1 and "x" in heard[0]
    finally:
        hung.close()


def test_by_server_keeps_order():
    records = [{"server_url": u, "prompt_id": str(i)} for i, u in enumerate("abab")]
    assert {k: [r["prompt_id"] for r in v] for k, v in jobs.by_server(records).items()} == {
        "a": ["0", "2"],
        "b": ["1", "3"],
    }


# -- a crashed submit's job found under the id an older server gave it --------------------


def test_an_adopted_resubmit_is_the_one_its_original_names(tmp_path: Path) -> None:
    from comfyctl.submission import as_the_server_has_it

    url = "http://127.0.0.1:1"
    ledger = Ledger(tmp_path / "ledger.json")
    original = {**new_record("orig", "a", url, "c0", None), "superseded_by": "ours"}
    with ledger.transaction() as tasks:
        tasks.put(original)
        tasks.put(new_record("ours", "a", url, "c1", None, None, "orig"))
    with ledger.transaction() as tasks:
        queued = Observation("queued", "theirs", url, number=3)
        as_the_server_has_it(tasks, tasks["ours"], queued)
    assert ledger.get("ours") is None
    assert ledger.get("theirs")["status"] == "pending"
    assert ledger.get("orig")["superseded_by"] == "theirs"


def test_a_poller_always_finds_a_job_moved_to_its_adopted_id(tmp_path: Path) -> None:
    """The tracker moves the record while the server's poller reads the ids from its own
    thread: the poller must never find none (it would stop) nor fail."""
    import copy
    import sys

    from comfyctl.tracker import Tracker, WatchOptions, _Settled

    ledger = Ledger(tmp_path / "ledger.json")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches as often as they can be
    try:
        for n in range(100):
            record = new_record(f"ours-{n}", "a", "http://127.0.0.1:1", "c", None)
            tracker = Tracker(
                ledger, [record], lambda r: None, WatchOptions(use_websocket=False), print
            )
            state = tracker.servers["http://127.0.0.1:1"]
            done, seen = threading.Event(), []
            poller = threading.Thread(target=_poll, args=(tracker, state, done, seen))
            poller.start()
            moved = {**copy.deepcopy(record), "prompt_id": f"theirs-{n}", "status": "pending"}
            tracker._settled(_Settled(f"ours-{n}", moved))
            done.set()
            poller.join()
            assert 0 not in seen, n
    finally:
        sys.setswitchinterval(interval)


def _poll(tracker: Any, state: Any, done: threading.Event, seen: list[int]) -> None:
    while not done.is_set():
        seen.append(len(tracker._active_ids(state)))
