"""The task ledger: one complete JSON document, locked for writers, atomic under SIGKILL.

Several tests run real child processes (``python -c``) so that the cross-process lock and
the atomic replace are exercised exactly as separate comfyctl invocations would use them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import comfyctl
from comfyctl.errors import ExitCode, LedgerCorrupt, LedgerError, LedgerLocked, UsageProblem
from comfyctl.ledger import SCHEMA_NAME, SCHEMA_VERSION, Ledger
from comfyctl.records import new_record, now_iso

SRC = Path(comfyctl.__file__).resolve().parents[1]


def record(prompt_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "prompt_id": prompt_id,
        "server": "gpu1",
        "server_url": "http://gpu1:8188",
        "status": "pending",
        **fields,
    }


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Counted once (not keys.count per key: quadratic, 30 s for a 40,000-record file).
    duplicated = {key for key, n in Counter(key for key, _ in pairs).items() if n > 1}
    assert not duplicated, f"duplicate keys in the ledger file: {sorted(duplicated)}"
    return dict(pairs)


def read_document(path: Path) -> dict[str, Any]:
    """The raw file, parsed strictly (a key written twice is an error, not last-wins)."""
    return json.loads(path.read_bytes(), object_pairs_hook=no_duplicate_keys)


def child(code: str, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """A cheap child interpreter that can import comfyctl from this checkout."""
    return subprocess.Popen([sys.executable, "-S", "-c", code, str(SRC), *args], **popen)


# -- shape and round trip ------------------------------------------------------------------


def test_round_trip(ledger_path: Path) -> None:
    ledger = Ledger(ledger_path)
    records = {
        "a1": record("a1", labels={"batch": "7"}, progress={"value": 3, "max": 10}),
        "b2": record("b2", status="success", outputs=[{"filename": "ü ñ 画像.png"}]),
        "c3": new_record("c3", "gpu2", "http://gpu2:8188", "comfyctl-x", "sha256:00"),
    }
    with ledger.transaction() as tasks:
        for rec in records.values():
            tasks.put(rec)
    assert Ledger(ledger_path).load() == records
    assert Ledger(ledger_path).get("b2") == records["b2"]
    assert Ledger(ledger_path).get("nope") is None


def test_document_has_schema_and_records_keyed_by_prompt_id(ledger_path: Path) -> None:
    ledger = Ledger(ledger_path)
    with ledger.transaction() as tasks:
        tasks.put(record("p-1"))
        tasks.put(record("p-2"))
    doc = read_document(ledger_path)
    assert doc["schema"] == SCHEMA_NAME == "comfyctl.ledger"
    assert doc["schema_version"] == SCHEMA_VERSION == 2
    assert set(doc["tasks"]) == {"p-1", "p-2"}
    for prompt_id, rec in doc["tasks"].items():
        assert rec["prompt_id"] == prompt_id
    assert stat.S_IMODE(ledger_path.stat().st_mode) == 0o600


def test_update_remove_and_empty_document(ledger_path: Path) -> None:
    ledger = Ledger(ledger_path)
    with ledger.transaction() as tasks:
        tasks.put(record("a"))
        tasks.put(record("b"))
    with ledger.transaction() as tasks:
        stored = tasks.get("a")
        assert stored is not None
        stored["status"] = "running"
        tasks.put(stored)
        assert tasks.remove("b") is not None
        assert tasks.remove("never-there") is None
    assert ledger.load() == {"a": record("a", status="running")}
    with ledger.transaction() as tasks:
        tasks.remove("a")
    assert ledger.load() == {}
    assert read_document(ledger_path)["tasks"] == {}


def test_missing_ledger_reads_empty_and_a_read_only_transaction_writes_nothing(
    ledger_path: Path,
) -> None:
    ledger = Ledger(ledger_path)
    assert ledger.load() == {}
    with ledger.transaction() as tasks:
        assert len(tasks) == 0
        assert tasks.get("x") is None
    assert not ledger_path.exists()


def test_a_transaction_that_raises_writes_nothing(ledger_path: Path) -> None:
    ledger = Ledger(ledger_path)
    with ledger.transaction() as tasks:
        tasks.put(record("kept"))
    before = ledger_path.read_bytes()
    with pytest.raises(RuntimeError), ledger.transaction() as tasks:
        tasks.put(record("half-done"))
        tasks.remove("kept")
        raise RuntimeError("boom")
    assert ledger_path.read_bytes() == before
    assert set(ledger.load()) == {"kept"}


def test_a_write_clears_temp_files_of_killed_writers_only(ledger_path: Path) -> None:
    folder = ledger_path.parent
    stale = folder / f".{ledger_path.name}.k1ll3d.tmp"
    others = [
        folder / ".other.json.abc.tmp",
        folder / f"{ledger_path.name}.bak",
        folder / f".{ledger_path.name}.lock",
        # The leases file is written under its own lock: its temp file may be in flight.
        folder / f".{ledger_path.name}.leases.json.w0rk1ng.tmp",
    ]
    for path in [stale, *others]:
        path.write_text("x")
    ledger = Ledger(ledger_path)
    assert ledger.load() == {}
    assert stale.exists()  # reads touch nothing
    with ledger.transaction() as tasks:
        tasks.put(record("a"))
    assert not stale.exists()
    assert all(path.exists() for path in others)


# -- workflow store ------------------------------------------------------------------------

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
}


def test_workflow_store_is_content_addressed_beside_the_ledger(ledger_path: Path) -> None:
    ledger = Ledger(ledger_path)
    ref = ledger.store_workflow(GRAPH)
    algo, _, digest = ref.partition(":")
    assert algo == "sha256" and len(digest) == 64
    assert int(digest, 16) >= 0
    stored = ledger_path.parent / "workflows" / f"{digest}.json"
    assert stored.is_file()
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest

    same_graph_other_key_order = {
        "2": {"inputs": {"filename_prefix": "x", "images": ["1", 0]}, "class_type": "SaveImage"},
        "1": {"inputs": {"height": 64, "width": 64}, "class_type": "EmptyImage"},
    }
    assert ledger.store_workflow(same_graph_other_key_order) == ref
    other = ledger.store_workflow({**GRAPH, "3": {"class_type": "X", "inputs": {}}})
    assert other != ref
    assert len(list((ledger_path.parent / "workflows").glob("*.json"))) == 2

    assert ledger.load_workflow(ref) == GRAPH
    assert Ledger(ledger_path).load_workflow(ref) == GRAPH


def test_load_workflow_missing_is_a_ledger_error(ledger_path: Path) -> None:
    ledger = Ledger(ledger_path)
    with pytest.raises(LedgerError) as info:
        ledger.load_workflow("sha256:" + "0" * 64)
    assert "0" * 64 in str(info.value)


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_prune_workflows_keeps_referenced_and_recent_files(ledger_path: Path) -> None:
    ledger = Ledger(ledger_path)
    folder = ledger_path.parent / "workflows"
    refs = {
        name: ledger.store_workflow({"1": {"class_type": name, "inputs": {}}})
        for name in ("referenced_old", "unreferenced_old", "unreferenced_new", "restored")
    }
    files = {name: folder / f"{ref.split(':')[1]}.json" for name, ref in refs.items()}
    for name in ("referenced_old", "unreferenced_old", "restored"):
        _age(files[name], 2 * 3600)
    # Storing the same graph again (a new submit) makes it recent: a prune must keep it.
    assert (
        ledger.store_workflow({"1": {"class_type": "restored", "inputs": {}}}) == refs["restored"]
    )

    removed = ledger.prune_workflows({refs["referenced_old"]})

    assert removed == [refs["unreferenced_old"]]
    assert not files["unreferenced_old"].exists()
    for name in ("referenced_old", "unreferenced_new", "restored"):
        assert files[name].exists(), name
    assert ledger.prune_workflows({refs["referenced_old"]}) == []
    assert ledger.prune_workflows(set(), min_age=0.0) != []


def test_prune_workflows_without_a_store_is_a_no_op(ledger_path: Path) -> None:
    assert Ledger(ledger_path).prune_workflows(set()) == []


# -- concurrent writers --------------------------------------------------------------------

WRITER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from comfyctl.ledger import Ledger
ledger, writer = Ledger(sys.argv[2], lock_timeout=60), sys.argv[3]
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
for i in range(50):
    with ledger.transaction() as tasks:
        tasks.put({"prompt_id": f"w{writer}-{i:02d}", "writer": writer, "i": i})
"""


@pytest.mark.faults
def test_eight_processes_writing_fifty_records_each_end_with_400(ledger_path: Path) -> None:
    procs = [
        child(
            WRITER,
            str(ledger_path),
            str(w),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(8)
    ]
    try:
        for proc in procs:  # all started and importing done: now release them together
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        for proc in procs:
            assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()  # type: ignore
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    doc = read_document(ledger_path)  # also rejects duplicated keys
    tasks = doc["tasks"]
    expected = {f"w{w}-{i:02d}" for w in range(8) for i in range(50)}
    assert len(tasks) == 400
    assert set(tasks) == expected
    for prompt_id, rec in tasks.items():
        assert prompt_id == f"w{rec['writer']}-{rec['i']:02d}"


KILLED_WRITERS = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from comfyctl.ledger import Ledger
# Imported once; each trial's writer is a fork of this process (a few ms, where a fresh
# interpreter takes ~100 ms), told "tag pad" on stdin, and killed by the test.
for line in sys.stdin:
    tag, pad_length = line.split()
    writer = os.fork()
    if writer == 0:
        try:
            # Small segments: finished records move to history (new segments, manifests).
            ledger = Ledger(sys.argv[2], lock_timeout=60, segment_size=20, move_at=3)
            pad = "x" * int(pad_length)
            os.write(1, f"ready {os.getpid()}\n".encode())
            i = 0
            while True:
                prompt_id = f"{tag}-{i}"
                with ledger.transaction() as tasks:
                    tasks.put({"prompt_id": prompt_id, "i": i, "pad": pad,
                               "status": "success" if i % 2 else "pending"})
                os.write(1, (prompt_id + "\n").encode())  # acknowledged: it has returned
                i += 1
        finally:  # a writer that fails never goes on as a second forker
            os._exit(1)
    _, status = os.waitpid(writer, 0)
    os.write(1, f"reaped {status}\n".encode())  # after every line the writer wrote
"""


@pytest.mark.faults
def test_sigkill_never_corrupts_nor_loses_acknowledged_records(
    ledger_path: Path, fault_counts: dict, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(0xC0FFEE)
    acknowledged: dict[str, tuple[int, int]] = {}  # prompt_id -> (i, pad length)
    started = time.monotonic()
    forker = child(KILLED_WRITERS, str(ledger_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    request.addfinalizer(forker.kill)  # should an assertion end the test early
    assert forker.stdin is not None and forker.stdout is not None
    for trial in range(100):
        pad = rng.choice((0, 50, 500, 5000))
        forker.stdin.write(f"t{trial} {pad}\n".encode())
        forker.stdin.flush()
        ready = forker.stdout.readline().split()
        assert ready[:1] == [b"ready"], ready
        time.sleep(rng.uniform(0.0, 0.05))  # the random moment of the kill
        os.kill(int(ready[1]), signal.SIGKILL)
        acked_now = []
        while not (line := forker.stdout.readline().decode()).startswith("reaped"):
            assert line, "the forking child died"
            acked_now.append(line.strip())
        status = int(line.split()[1])
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        for prompt_id in acked_now:
            acknowledged[prompt_id] = (int(prompt_id.split("-")[1]), pad)

        try:
            records = Ledger(ledger_path).load()
        except LedgerCorrupt as exc:  # pragma: no cover - the failure being tested for
            pytest.fail(f"trial {trial}: a SIGKILL left an unreadable ledger: {exc}")
        lost = sorted(set(acknowledged) - set(records))
        assert not lost, f"trial {trial}: acknowledged records lost: {lost[:5]}"
        # Whatever is there is whole: only ids a writer made, each record intact.
        this_trial = [pid for pid in records if pid.startswith(f"t{trial}-")]
        assert len(this_trial) <= len(acked_now) + 1
        for prompt_id in this_trial:
            rec = records[prompt_id]
            i = int(prompt_id.split("-")[1])
            assert rec == {
                "prompt_id": prompt_id,
                "i": i,
                "pad": "x" * pad,
                "status": "success" if i % 2 else "pending",
            }
    forker.stdin.close()
    assert forker.wait(timeout=10) == 0
    assert acknowledged, "no child ever acknowledged a write: the test proved nothing"
    read_document(ledger_path)
    # Killed writers leave temp files behind; the next write under the lock clears them.
    with Ledger(ledger_path, segment_size=20, move_at=3).transaction() as tasks:
        tasks.put(record("after-the-kills"))
    assert [p.name for p in ledger_path.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert any(ledger_path.with_name("ledger-history").glob("segment-*.json"))
    assert set(acknowledged) < set(Ledger(ledger_path).load())
    assert time.monotonic() - started < 50
    fault_counts["SIGKILL trials: ledger writer"] = 100


# -- corrupt ledgers -----------------------------------------------------------------------


def _valid_document() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.json")
        with ledger.transaction() as tasks:
            for n in range(5):
                tasks.put(record(f"id-{n}"))
        return ledger.path.read_bytes()


VALID = _valid_document()
CORRUPT = {
    "garbage-bytes": b"\x00\xff\xfe\x89PNG\r\n\x1a\n garbage \xc3\x28",
    "truncated": VALID[: len(VALID) // 2],
    "truncated-last-byte": VALID.rstrip()[:-1],
    "empty": b"",
    "list-top-level": b"[]",
    "tasks-not-an-object": json.dumps(
        {"schema": SCHEMA_NAME, "schema_version": 1, "tasks": []}
    ).encode(),
    "no-tasks": json.dumps({"schema": SCHEMA_NAME, "schema_version": 1}).encode(),
    "future-schema-version": json.dumps(
        {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION + 1, "tasks": {}}
    ).encode(),
    "schema-version-not-int": json.dumps(
        {"schema": SCHEMA_NAME, "schema_version": "1", "tasks": {}}
    ).encode(),
    "record-not-an-object": json.dumps(
        {"schema": SCHEMA_NAME, "schema_version": 1, "tasks": {"a": 5}}
    ).encode(),
    "record-under-another-key": json.dumps(
        {"schema": SCHEMA_NAME, "schema_version": 1, "tasks": {"a": record("b")}}
    ).encode(),
}


def _plant(path: Path, content: bytes) -> int:
    """Write a file with an mtime in the past, so that any rewrite would show; returns it."""
    path.write_bytes(content)
    past = time.time_ns() - 3_600 * 10**9
    os.utime(path, ns=(past, past))
    return path.stat().st_mtime_ns


@pytest.mark.parametrize("content", list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_ledger_raises_and_is_left_untouched(ledger_path: Path, content: bytes) -> None:
    mtime = _plant(ledger_path, content)
    ledger = Ledger(ledger_path, lock_timeout=2)
    with pytest.raises(LedgerCorrupt) as info:
        ledger.load()
    assert str(ledger_path) in str(info.value)
    assert info.value.exit_code == ExitCode.LEDGER == 7
    with pytest.raises(LedgerCorrupt), ledger.transaction() as tasks:
        tasks.put(record("would-overwrite"))  # pragma: no cover - never reached
    assert ledger_path.read_bytes() == content
    assert ledger_path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "name",
    [
        "garbage-bytes",
        "truncated",
        "future-schema-version",
        "list-top-level",
        "record-not-an-object",
    ],
)
def test_history_on_a_corrupt_ledger_exits_7_naming_the_path(
    invoke, ledger_path: Path, name: str
) -> None:
    mtime = _plant(ledger_path, CORRUPT[name])
    result = invoke("history")
    assert result.exit_code == 7, result.output
    assert str(ledger_path) in result.stderr
    assert result.stdout == ""
    assert ledger_path.read_bytes() == CORRUPT[name]
    assert ledger_path.stat().st_mtime_ns == mtime


def test_history_subprocess_on_a_corrupt_ledger(run_comfyctl, ledger_path: Path) -> None:
    mtime = _plant(ledger_path, CORRUPT["truncated"])
    proc = run_comfyctl("history", "--json")
    assert proc.returncode == 7, proc.stderr
    assert str(ledger_path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert ledger_path.read_bytes() == CORRUPT["truncated"]
    assert ledger_path.stat().st_mtime_ns == mtime


# -- the lock ------------------------------------------------------------------------------

HOLDER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from comfyctl.ledger import Ledger
with Ledger(sys.argv[2]).transaction():
    sys.stdout.write("locked\n"); sys.stdout.flush()
    sys.stdin.readline()
"""


@contextlib.contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[None]:
    proc = child(
        HOLDER, str(path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"locked\n", proc.stderr.read().decode()
        yield
    finally:
        proc.stdin.close()  # lets the holder leave its transaction
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.faults
def test_lock_timeout_raises_ledger_locked(ledger_path: Path) -> None:
    with Ledger(ledger_path).transaction() as tasks:
        tasks.put(record("before"))
    with lock_held_elsewhere(ledger_path):
        ledger = Ledger(ledger_path, lock_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(LedgerLocked) as info, ledger.transaction() as tasks:
            tasks.put(record("blocked"))  # pragma: no cover - never reached
        waited = time.monotonic() - started
        assert 0.3 <= waited < 3
        assert info.value.exit_code == 7
        assert str(ledger_path) in str(info.value)
        assert ledger.load() == {"before": record("before")}  # reads need no lock
    with Ledger(ledger_path, lock_timeout=5).transaction() as tasks:  # released: works again
        tasks.put(record("after"))
    assert set(Ledger(ledger_path).load()) == {"before", "after"}


@pytest.mark.faults
def test_lock_timeout_from_the_environment_exits_7(
    invoke, ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = record(
        "old",
        status="success",
        finished_at="2000-01-01T00:00:00.000+00:00",
        updated_at="2000-01-01T00:00:00.000+00:00",
        workflow=None,
    )
    with Ledger(ledger_path).transaction() as tasks:
        tasks.put(old)
    before = ledger_path.read_bytes()
    monkeypatch.setenv("COMFYCTL_LOCK_TIMEOUT", "0.5")
    with lock_held_elsewhere(ledger_path):
        started = time.monotonic()
        result = invoke("history", "--prune", "--older-than", "1d")
        waited = time.monotonic() - started
    assert result.exit_code == 7, result.output
    assert "locked" in result.stderr and str(ledger_path) in result.stderr
    assert 0.5 <= waited < 5
    assert ledger_path.read_bytes() == before
    # Without the competing holder the same command does its job.
    assert invoke("history", "--prune", "--older-than", "1d").exit_code == 0
    assert Ledger(ledger_path).load() == {}


@pytest.mark.parametrize("value", ["soon", "nan", "-1", ""])
def test_bad_lock_timeout_in_the_environment(
    invoke, monkeypatch: pytest.MonkeyPatch, ledger_path: Path, value: str
) -> None:
    monkeypatch.setenv("COMFYCTL_LOCK_TIMEOUT", value)
    if not value:  # unset in effect: the default
        assert Ledger(ledger_path).lock_timeout == 10.0
        return
    with pytest.raises(UsageProblem, match="COMFYCTL_LOCK_TIMEOUT"):
        Ledger(ledger_path)
    result = invoke("history", "--prune", "--older-than", "1d")
    assert result.exit_code == 2
    assert "COMFYCTL_LOCK_TIMEOUT" in result.stderr
    assert Ledger(ledger_path, lock_timeout=1).lock_timeout == 1  # an explicit value wins


# -- a model-based property ----------------------------------------------------------------

OPS = st.lists(
    st.tuples(st.sampled_from(["put", "remove"]), st.integers(0, 5), st.integers(0, 10**6)),
    max_size=12,
)


@settings(max_examples=25, deadline=None, database=None)
@given(per_writer=st.lists(OPS, min_size=2, max_size=3), shared_object=st.booleans())
def test_threads_writing_concurrently_match_a_dict_model(
    per_writer: list[list[tuple]], shared_object: bool
) -> None:
    """Each writer thread owns its keys; lost or resurrected updates break the equality."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.json"
        shared = Ledger(path, lock_timeout=30)
        barrier = threading.Barrier(len(per_writer))
        errors: list[BaseException] = []

        def write(writer: int, ops: list[tuple]) -> None:
            # Own Ledger objects contend on the flock itself, not only the thread lock.
            ledger = shared if shared_object else Ledger(path, lock_timeout=30)
            try:
                barrier.wait()
                for op, key, value in ops:
                    with ledger.transaction() as tasks:
                        prompt_id = f"w{writer}-k{key}"
                        if op == "put":
                            tasks.put({"prompt_id": prompt_id, "value": value})
                        else:
                            tasks.remove(prompt_id)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=write, args=(w, ops)) for w, ops in enumerate(per_writer)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors

        model: dict[str, dict[str, Any]] = {}
        for writer, ops in enumerate(per_writer):
            for op, key, value in ops:
                prompt_id = f"w{writer}-k{key}"
                if op == "put":
                    model[prompt_id] = {"prompt_id": prompt_id, "value": value}
                else:
                    model.pop(prompt_id, None)
        assert Ledger(path).load() == model
        if path.exists():
            read_document(path)


STEP = st.tuples(
    st.integers(0, 2),  # which writer (its own Ledger object on the same file)
    st.lists(
        st.tuples(st.sampled_from(["put", "remove"]), st.integers(0, 4), st.integers(0, 99)),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),  # the transaction fails half-way: none of its changes may land
)


@settings(max_examples=60, deadline=None, database=None)
@given(steps=st.lists(STEP, max_size=20))
def test_interleaved_transactions_on_shared_keys_match_a_dict_model(
    steps: list[tuple[int, list[tuple], bool]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.json"
        writers = [Ledger(path, lock_timeout=5) for _ in range(3)]
        model: dict[str, dict[str, Any]] = {}
        for writer, ops, fails in steps:
            pending = dict(model)
            with contextlib.suppress(ZeroDivisionError), writers[writer].transaction() as tasks:
                for op, key, value in ops:
                    prompt_id = f"k{key}"
                    if op == "put":
                        rec = {"prompt_id": prompt_id, "value": value, "by": writer}
                        tasks.put(rec)
                        pending[prompt_id] = rec
                    else:
                        tasks.remove(prompt_id)
                        pending.pop(prompt_id, None)
                if fails:
                    raise ZeroDivisionError
            if not fails:
                model = pending
            assert writers[(writer + 1) % 3].load() == model
        assert Ledger(path).load() == model


# -- the lazy line layout ------------------------------------------------------------------


def test_other_layouts_are_read_strictly_and_rewritten_in_ours(ledger_path: Path) -> None:
    """A ledger pretty-printed by hand (e.g. through jq) still reads; the next change writes
    it back one record per line."""
    records = {f"id-{i}": new_record(f"id-{i}", "gpu1", "http://h:1", "c", None) for i in range(3)}
    ledger_path.write_text(
        json.dumps(
            {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "tasks": records}, indent=2
        )
    )
    ledger = Ledger(ledger_path)
    assert set(ledger.load()) == set(records)
    with ledger.transaction() as tasks:
        tasks.remove("id-1")
    text = ledger_path.read_text()
    assert text.count("\n") == 4 and set(json.loads(text)["tasks"]) == {"id-0", "id-2"}


def test_a_corrupt_record_line_exits_7_untouched(invoke, ledger_path: Path) -> None:
    ledger = Ledger(ledger_path)
    with ledger.transaction() as tasks:
        for i in range(3):
            tasks.put(new_record(f"id-{i}", "gpu1", "http://h:1", "c", None))
    broken = ledger_path.read_bytes().replace(b'"prompt_id":"id-1",', b'"prompt_id":"id-1",,')
    ledger_path.write_bytes(broken)
    result = invoke("history")
    assert result.exit_code == 7 and str(ledger_path) in result.stderr
    assert ledger_path.read_bytes() == broken


@settings(max_examples=60, deadline=None, database=None)
@given(
    st.lists(st.tuples(st.sampled_from(["put", "remove"]), st.integers(0, 6)), max_size=25),
    st.integers(0, 6),
)
def test_line_edits_keep_a_valid_document_equal_to_the_model(ops, seed_count) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.json")
        model: dict[str, int] = {}
        with ledger.transaction() as tasks:
            for i in range(seed_count):
                tasks.put({**new_record(f"p{i}", "s", "http://s", "c", None), "n": -1})
                model[f"p{i}"] = -1
        for step, (op, n) in enumerate(ops):
            with ledger.transaction() as tasks:
                if op == "put":
                    tasks.put({**new_record(f"p{n}", "s", "http://s", "c", None), "n": step})
                    model[f"p{n}"] = step
                else:
                    tasks.remove(f"p{n}")
                    model.pop(f"p{n}", None)
            path = Path(tmp) / "ledger.json"
            doc = json.loads(path.read_bytes()) if path.exists() else {"tasks": {}}
            assert {k: v["n"] for k, v in doc["tasks"].items()} == model
            loaded = ledger.load()
            assert {pid: loaded[pid]["n"] for pid in loaded} == model


# -- history segments ----------------------------------------------------------------------


def finished(
    prompt_id: str,
    i: int,
    status: str = "success",
    updated_at: str = "2026-02-01T01:00:00.000+00:00",
) -> dict[str, Any]:
    return {
        **new_record(prompt_id, "gpu1", "http://gpu1:8188", f"c-{i}", None),
        "status": status,
        "submitted_at": f"2026-02-01T00:00:00.{i:06d}Z",
        "updated_at": updated_at,
    }


def history_files(ledger_path: Path) -> dict[str, tuple[int, int]]:
    folder = ledger_path.with_name("ledger-history")
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_finished_jobs_move_to_segments_that_never_change(ledger_path: Path) -> None:
    ledger = Ledger(ledger_path, segment_size=10, move_at=4)
    with ledger.transaction() as tasks:
        for i in range(35):
            tasks.put(finished(f"f{i:03d}", i))
        tasks.put(new_record("active-1", "gpu1", "http://gpu1:8188", "c", None))
    live = read_document(ledger_path)
    assert set(live["tasks"]) == {"active-1"}  # the live file holds the unfinished job only
    manifest = read_document(ledger_path.with_name("ledger-history") / live["history"])
    assert [s["count"] for s in manifest["segments"]] == [10, 10, 10, 5]
    full = {s["file"] for s in manifest["segments"] if s["count"] == 10}
    before = history_files(ledger_path)
    for name in before:  # every file is plain JSON, readable with jq
        read_document(ledger_path.with_name("ledger-history") / name)
    with ledger.transaction() as tasks:  # more finished jobs: only the tail is rewritten
        for i in range(35, 40):
            tasks.put(finished(f"f{i:03d}", i))
    after = history_files(ledger_path)
    for name in full:
        assert after[name] == before[name], f"{name} was rewritten"
    assert set(ledger.load()) == {f"f{i:03d}" for i in range(40)} | {"active-1"}
    assert len(read_document(ledger_path)["tasks"]) < 5
    # Just finished jobs stay live a while (a hook claims each, history shows them).
    with ledger.transaction() as tasks:
        for i in range(40, 50):
            tasks.put(finished(f"f{i:03d}", i, updated_at=now_iso()))
    assert len(read_document(ledger_path)["tasks"]) == 11
    after = history_files(ledger_path)
    # A submit touches the live file only, however long the history.
    with ledger.transaction() as tasks:
        tasks.put(new_record("active-2", "gpu1", "http://gpu1:8188", "c", None))
    assert history_files(ledger_path) == after


def test_replaced_history_files_stay_an_hour_for_readers(ledger_path: Path) -> None:
    ledger = Ledger(ledger_path, segment_size=3, move_at=1)
    with ledger.transaction() as tasks:
        tasks.put(finished("f000", 0))
    reader = ledger.load()  # holds manifest and tail of this moment
    old = history_files(ledger_path)
    with ledger.transaction() as tasks:
        tasks.put(finished("f001", 1))
    assert set(old) < set(history_files(ledger_path))  # the old tail and manifest kept
    assert reader["f000"]["status"] == "success"
    late_reader = ledger.load()  # has read nothing from history yet
    with ledger.transaction() as tasks:  # retires the files both readers refer to
        tasks.put(finished("f002", 2))
    retired = set(history_files(ledger_path)) - {read_document(ledger_path)["history"]}
    for name in retired:  # an hour later, the next history write deletes them
        past = time.time() - 7200
        os.utime(ledger_path.with_name("ledger-history") / name, (past, past))
    with ledger.transaction() as tasks:
        tasks.put(finished("f003", 3))
    assert not set(old) & set(history_files(ledger_path))
    assert set(ledger.load()) == {"f000", "f001", "f002", "f003"}
    assert list(reader.newest_first()) == ["f000"]  # its snapshot, already read
    # The late reader's files are gone: it reads the ledger again instead of failing.
    assert list(late_reader.newest_first()) == ["f003", "f002", "f001", "f000"]


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_segment_exits_7_and_is_left_alone(
    invoke, ledger_path: Path, damage: str
) -> None:
    ledger = Ledger(ledger_path, segment_size=5, move_at=1)
    with ledger.transaction() as tasks:
        for i in range(12):
            tasks.put(finished(f"f{i:03d}", i))
    segment = sorted(ledger_path.with_name("ledger-history").glob("segment-*.json"))[0]
    if damage == "truncate":
        segment.write_bytes(segment.read_bytes()[:100])
    else:
        segment.unlink()
    result = invoke("history", "--status", "success")
    assert result.exit_code == 7, result.output
    assert "ledger-history" in result.stderr and "Traceback" not in result.stderr
    if damage == "truncate":
        assert len(segment.read_bytes()) == 100


# -- migration from schema 1 ---------------------------------------------------------------


def test_a_schema_1_ledger_of_100000_records_is_migrated_losslessly(ledger_path: Path) -> None:
    statuses = [
        "success",
        "error",
        "cancelled",
        "interrupted",
        "rejected",
        "lost",
        "running",
        "pending",
    ]
    tasks = {}
    for i in range(100_000):
        pid = f"{i:08d}-0000-4000-8000-000000000000"
        tasks[pid] = {
            **finished(pid, i, statuses[i % 8] if i % 1000 else "pending"),
            "labels": {"n": str(i)},
        }
    old = (
        b'{"schema": "comfyctl.ledger", "schema_version": 1, "tasks": {\n'
        + b",\n".join(
            json.dumps(pid).encode() + b":" + json.dumps(r).encode() for pid, r in tasks.items()
        )
        + b"\n}}\n"
    )
    ledger_path.write_bytes(old)

    view = Ledger(ledger_path).load()  # first use migrates

    backup = ledger_path.with_name("ledger.json.schema-1.bak")
    assert backup.read_bytes() == old
    live = read_document(ledger_path)
    assert live["schema_version"] == 2
    unsettled = {pid for pid, r in tasks.items() if r["status"] in ("running", "pending", "lost")}
    assert set(live["tasks"]) == unsettled
    assert len(ledger_path.read_bytes()) < len(old) / 2
    everything = {r["prompt_id"]: r for r in view.values()}
    assert everything == tasks  # every record, every field
    assert (
        view["00054321-0000-4000-8000-000000000000"]
        == tasks["00054321-0000-4000-8000-000000000000"]
    )
    assert [r["prompt_id"] for _, r in zip(range(3), view.newest(), strict=False)] == [
        f"{i:08d}-0000-4000-8000-000000000000" for i in (99_999, 99_998, 99_997)
    ]
    migrated = ledger_path.read_bytes()
    Ledger(ledger_path).load()
    assert ledger_path.read_bytes() == migrated  # once only


def test_a_ledger_another_process_migrated_meanwhile_is_read_again_not_migrated_again(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # load() reads the old file without the lock, and migrates what it read only if the
    # file is still that one under the lock: else another process migrated (and maybe
    # wrote) in between, and the copy read first is stale.
    tasks = {f"f{i:03d}": finished(f"f{i:03d}", i) for i in range(40)}
    tasks["live"] = record("live")
    old = json.dumps({"schema": SCHEMA_NAME, "schema_version": 1, "tasks": tasks}).encode()
    ledger_path.write_bytes(old)
    real_locked = Ledger.locked
    others: list[Ledger] = []

    def locked(self: Ledger) -> Any:
        if not others:  # the first lock taken: another process gets there first
            others.append(Ledger(ledger_path))
            with others[0].transaction() as other:  # migrates, then writes
                other.put(record("live", status="running"))
        return real_locked(self)

    monkeypatch.setattr(Ledger, "locked", locked)
    view = Ledger(ledger_path).load()
    assert view["live"]["status"] == "running"  # not the stale copy read before the lock
    assert Ledger(ledger_path).get("live") == record("live", status="running")
    assert ledger_path.with_name("ledger.json.schema-1.bak").read_bytes() == old
    assert {r["prompt_id"]: r for r in view.values() if r["prompt_id"] != "live"} == {
        k: v for k, v in tasks.items() if k != "live"
    }


def test_the_migration_is_a_numbered_step_from_each_version() -> None:
    from comfyctl.ledger import MIGRATIONS

    assert len(MIGRATIONS) == SCHEMA_VERSION - 1


def test_an_empty_schema_1_ledger_migrates_to_an_empty_one(ledger_path: Path, invoke) -> None:
    ledger_path.write_text('{"schema": "comfyctl.ledger", "schema_version": 1, "tasks": {}}')
    result = invoke("history", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tasks"] == []
    assert read_document(ledger_path)["schema_version"] == 2


def test_a_reading_of_the_live_file_is_reused_only_while_its_bytes_are_the_same(
    ledger_path: Path,
) -> None:
    mine, other = Ledger(ledger_path), Ledger(ledger_path)  # two processes, in effect
    with mine.transaction() as tasks:
        for i in range(3):
            tasks.put(record(f"id-{i}", status="pending"))
    assert mine.get("id-1")["status"] == "pending"
    with other.transaction() as tasks:
        tasks.put({**tasks["id-1"], "status": "running"})
    assert mine.get("id-1")["status"] == "running"
    # Edited in place by hand, same size, at once (same inode; same mtime on a coarse clock).
    edited = ledger_path.read_bytes().replace(b'"status":"running"', b'"status":"success"')
    ledger_path.write_bytes(edited)
    assert mine.get("id-1")["status"] == "success"
    with mine.transaction() as tasks:
        tasks.put({**tasks["id-0"], "status": "running"})
    assert read_document(ledger_path)["tasks"]["id-1"]["status"] == "success"


def test_a_transaction_parses_only_the_records_it_touches(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger(ledger_path).transaction() as tasks:
        for i in range(200):
            tasks.put(record(f"id-{i}"))
    ledger = Ledger(ledger_path)
    assert len(ledger.load()) == 200  # the first reading parses (and checks) them all
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(
        json, "loads", lambda text, **kw: parsed.append(1) or real_loads(text, **kw)
    )
    for step in range(3):
        with ledger.transaction() as tasks:
            tasks.put({**tasks["id-7"], "status": "running", "step": step})
        assert ledger.get("id-9")["status"] == "pending"
    assert len(parsed) == 6  # id-7 and id-9, three times
    assert [r["prompt_id"] for r in ledger.load().values()][:3] == ["id-0", "id-1", "id-2"]


# -- where the ledger is ---------------------------------------------------------------------


def _wf(tmp_path: Path) -> str:
    from workflows import slow_graph

    path = tmp_path / "wf.json"
    path.write_text(json.dumps(slow_graph(steps=1, seconds=0.01)))
    return str(path)


def test_a_ledger_url_of_another_scheme_in_the_config_is_a_usage_error(
    invoke, config_path, monkeypatch
) -> None:
    monkeypatch.delenv("COMFYCTL_LEDGER")
    config_path.write_text('ledger = "mysql://u:s3cret@h/db"\n')
    result = invoke("history")
    assert result.exit_code == ExitCode.USAGE and "postgresql://" in result.stderr
    assert "s3cret" not in result.stderr


def test_a_ledger_url_of_another_scheme_exits_2_in_a_real_process(run_comfyctl, tmp_path) -> None:
    proc = run_comfyctl("--ledger", "mysql://x/y", "history")
    assert proc.returncode == 2, proc.stderr
    assert "postgresql://" in proc.stderr and "Traceback" not in proc.stderr


def test_an_empty_ledger_option_is_a_usage_error(invoke, ledger_path) -> None:
    result = invoke("--ledger", "", "history")
    assert result.exit_code == ExitCode.USAGE, (result.stdout, result.stderr)
    assert "--ledger" in result.stderr and "empty" in result.stderr


def test_a_path_with_a_colon_is_still_a_json_ledger(invoke, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("--ledger", "c:ledger.json", "history")
    assert result.exit_code == 0, result.stderr


def _under_a_file(tmp_path: Path) -> tuple[Path, Path]:
    blocker = tmp_path / "hostname"
    blocker.write_text("not a directory\n")
    return blocker, blocker / "x.json"


@pytest.mark.parametrize("command", ["submit", "history", "watch"])
def test_a_ledger_under_a_regular_file_is_exit_7_saying_so(
    invoke, emulator, tmp_path, command: str
) -> None:
    blocker, ledger = _under_a_file(tmp_path)
    args = {
        "submit": ("submit", _wf(tmp_path), "-s", emulator.url),
        "history": ("history",),
        "watch": ("watch",),
    }[command]
    result = invoke("--ledger", str(ledger), *args)
    assert result.exit_code == ExitCode.LEDGER, (result.stdout, result.stderr)
    assert f"The ledger {ledger} cannot be used" in result.stderr
    assert f"{blocker} is not a directory" in result.stderr
    assert "Check the path" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_ledger_whose_folder_cannot_be_made_is_exit_7_saying_so(
    invoke, emulator, tmp_path
) -> None:
    result = invoke(
        "--ledger", "/proc/nope/ledger.json", "submit", _wf(tmp_path), "-s", emulator.url
    )
    assert result.exit_code == ExitCode.LEDGER, (result.stdout, result.stderr)
    assert "The ledger /proc/nope/ledger.json cannot be used" in result.stderr
    assert "/proc/nope" in result.stderr and "Check the path" in result.stderr


def test_a_ledger_under_a_regular_file_is_exit_7_in_a_real_process(
    run_comfyctl, emulator, tmp_path
) -> None:
    blocker, ledger = _under_a_file(tmp_path)
    proc = run_comfyctl("--ledger", str(ledger), "submit", _wf(tmp_path), "-s", emulator.url)
    assert proc.returncode == 7, proc.stderr
    assert f"{blocker} is not a directory" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


MISTYPED_DATABASE_URLS = [
    "postgresql//studio:s3cret@127.0.0.1:18555/ledger",  # the colon missing
    "postgresql:/studio:s3cret@127.0.0.1:18555/ledger",  # one slash
    "PostgreS:studio:s3cret@127.0.0.1/ledger",
    "host=127.0.0.1 port=18555 dbname=ledger user=studio password=s3cret",  # libpq keywords
    "dbname=ledger password=s3cret",
]


OTHER_SCHEMES = [
    "mysql://x/y",
    "sqlite:///tmp/l.db",
    "https://host/ledger.json",
    "MySQL://studio:s3cret@h/db",
]


@pytest.mark.parametrize("url", OTHER_SCHEMES + MISTYPED_DATABASE_URLS)
def test_a_ledger_value_that_is_no_path_nor_database_url_is_a_usage_error(
    invoke, emulator, tmp_path, monkeypatch, url: str
) -> None:
    """Another scheme, a mistyped PostgreSQL URL or a libpq keyword string: as a path each
    would be a JSON ledger named after it (a password in folder names). Refused before any
    server is asked, never echoed."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for args in (["servers", "--json"], ["history"], ["submit", _wf(tmp_path), "-s", emulator.url]):
        result = invoke("--ledger", url, *args)
        assert result.exit_code == ExitCode.USAGE, (args, result.stdout, result.stderr)
        assert result.stdout == "" and "postgresql://" in result.stderr
        assert "s3cret" not in result.stderr and "studio" not in result.stderr
        assert emulator.url not in result.stderr
        assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("url", MISTYPED_DATABASE_URLS[1:4])
def test_a_mistyped_database_url_in_the_config_exits_2(
    run_comfyctl, config_path, monkeypatch, url
) -> None:
    config_path.write_text(f'ledger = "{url}"\n')
    monkeypatch.delenv("COMFYCTL_LEDGER")
    proc = run_comfyctl("servers", "--json")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and "s3cret" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", ["postgres.json", "postgresql/ledger.json", "my host=1.json"])
def test_paths_that_merely_mention_postgres_stay_json_ledgers(path: str, tmp_path) -> None:
    from comfyctl.ledger import Ledger
    from comfyctl.store import open_store

    assert isinstance(open_store(str(tmp_path / path)), Ledger)
    assert isinstance(open_store(path), Ledger)


def test_recording_a_queued_job_reads_no_history(ledger_path: Path, monkeypatch) -> None:
    """What submit writes after the server's reply touches the live file only (a lookup of
    a resubmit's original for every job read the whole history: 3.9 s at 100,000)."""
    from comfyctl.records import Observation
    from comfyctl.submission import as_the_server_has_it

    ledger = Ledger(ledger_path, segment_size=10, move_at=4)
    with ledger.transaction() as tasks:
        for i in range(35):
            tasks.put(finished(f"f{i:03d}", i))
        tasks.put(new_record("job-1", "gpu1", "http://gpu1:8188", "c", None))

    def no_history(self: Ledger, path: Path) -> Any:
        raise AssertionError(f"read {path.name}")

    monkeypatch.setattr(Ledger, "_read_history_file", no_history)
    with Ledger(ledger_path).transaction() as tasks:
        queued = Observation("queued", "job-1", "http://gpu1:8188", number=1)
        as_the_server_has_it(tasks, tasks["job-1"], queued)
    monkeypatch.undo()
    assert Ledger(ledger_path).get("job-1")["status"] == "pending"
