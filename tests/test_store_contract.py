"""One contract, every store: the same tests run against the JSON files and PostgreSQL.

The JSON store runs here with tiny history segments, so that records move between the
live file and several segments in nearly every test. Concurrency is tested with real
child processes that open the store from its --ledger value, as comfyctl does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import comfyctl
from comfyctl.errors import LedgerError, TaskNotFound, UsageProblem
from comfyctl.ledger import Ledger
from comfyctl.store import Records, Store, open_store

SRC = Path(comfyctl.__file__).resolve().parents[1]
STORES = ["json", "postgres"]


def rec(
    prompt_id: str,
    status: str = "pending",
    server: str = "http://gpu1:8188",
    at: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "prompt_id": prompt_id,
        "server": server.split("://")[1],
        "server_url": server,
        "status": status,
        "submitted_at": at or f"2026-01-01T00:00:{prompt_id[-2:]}.000Z",
        **fields,
    }


@pytest.fixture(params=STORES)
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The --ledger value of an empty store of each kind."""
    if request.param == "json":
        return str(tmp_path / "ledger.json")
    return request.getfixturevalue("postgres_ledger")  # type: ignore[no-any-return]


@pytest.fixture
def store(spec: str) -> Store:
    if spec.startswith("postgresql"):
        return open_store(spec)
    return Ledger(Path(spec), segment_size=5, move_at=2)


def put_all(store: Store, *records: dict[str, Any]) -> None:
    with store.transaction() as tasks:
        for record in records:
            tasks.put(record)


def test_it_is_a_store_and_its_views_are_records(store: Store) -> None:
    assert isinstance(store, Store)
    assert isinstance(store.load(), Records)
    with store.transaction() as tasks:
        assert isinstance(tasks, Records)
    assert "***" not in store.describe() or "postgresql" in store.describe()


def test_put_get_remove_round_trip(store: Store) -> None:
    a = rec("job-aaaa-01", labels={"batch": "7"}, outputs=[{"filename": "ü ñ 画像.png"}])
    put_all(store, a, rec("job-bbbb-02", "success"))
    assert store.get("job-aaaa-01") == a
    assert store.load()["job-bbbb-02"]["status"] == "success"
    assert store.get("nope") is None and "nope" not in store.load()
    with store.transaction() as tasks:
        assert tasks.remove("job-aaaa-01") == a
        assert tasks.remove("never-there") is None
        assert "job-aaaa-01" not in tasks and tasks.get("job-aaaa-01") is None
    assert store.get("job-aaaa-01") is None
    assert set(store.load()) == {"job-bbbb-02"}


def test_a_transaction_that_raises_changes_nothing(store: Store) -> None:
    put_all(store, rec("kept-0001"))
    with pytest.raises(RuntimeError), store.transaction() as tasks:
        tasks.put(rec("half-0002"))
        tasks.remove("kept-0001")
        assert "half-0002" in tasks and "kept-0001" not in tasks  # its own changes: seen
        raise RuntimeError("boom")
    assert set(store.load()) == {"kept-0001"}


def test_find_by_full_id_and_unique_prefix(store: Store) -> None:
    put_all(
        store,
        rec("abcd1111-01", "success"),
        rec("abcd2222-02", "success"),
        *(rec(f"zz{i:04d}-{i:02d}", "error") for i in range(12)),
        rec("live0000-03"),
    )
    view = store.load()
    assert view.find("abcd1111-01")["prompt_id"] == "abcd1111-01"
    assert view.find("abcd1")["prompt_id"] == "abcd1111-01"  # in history, by prefix
    assert view.find("live")["prompt_id"] == "live0000-03"
    with pytest.raises(UsageProblem, match="matches 2 jobs"):
        view.find("abcd")
    with pytest.raises(TaskNotFound):
        view.find("abc")  # shorter than 4: never a prefix
    with pytest.raises(TaskNotFound):
        view.find("nothing-like-it")
    assert [r["prompt_id"] for r in view.find_all(["abcd2", "abcd2222-02", "live"])] == [
        "abcd2222-02",
        "live0000-03",
    ]


def test_select_by_status_and_server(store: Store) -> None:
    gpu2 = "http://gpu2:8188"
    put_all(
        store,
        *(
            rec(
                f"s{i:04d}-{i:02d}",
                ("success", "running", "error")[i % 3],
                server=gpu2 if i % 2 else "http://gpu1:8188",
            )
            for i in range(30)
        ),
    )
    view = store.load()
    running = view.select(statuses={"running"})
    assert sorted(r["prompt_id"] for r in running) == [
        f"s{i:04d}-{i:02d}" for i in range(30) if i % 3 == 1
    ]
    on_gpu2 = view.select(statuses={"success", "error"}, server_urls={gpu2})
    assert {r["prompt_id"] for r in on_gpu2} == {
        f"s{i:04d}-{i:02d}" for i in range(30) if i % 3 != 1 and i % 2
    }
    assert len(view.select()) == 30 == len(view.values()) == len(view)
    assert view.select(statuses={"cancelled"}) == []


def test_unsettled_is_unfinished_and_lost_until_its_server_was_asked(store: Store) -> None:
    asked = {"original": "cancelled on its server"}
    put_all(
        store,
        rec("u-pend-01"),
        rec("u-subm-02", "submitting"),
        rec("u-done-03", "success"),
        rec("u-lost-04", "lost"),
        rec("u-lost-05", "lost", superseded_by="u-pend-01"),
        rec("u-lost-06", "lost", superseded_by="u-pend-01", recovered=asked),
        rec("u-fail-07", "error"),
        rec("u-canc-08", "cancelled"),
    )
    assert {r["prompt_id"] for r in store.load().unsettled()} == {
        "u-pend-01",
        "u-subm-02",
        "u-lost-04",
        "u-lost-05",
    }


def test_newest_first_pages_across_history(store: Store) -> None:
    records = [
        rec(
            f"n{i:04d}-xx",
            "success" if i % 4 else "running",
            at=f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:00:00.{i:03d}Z",
        )
        for i in range(60)
    ]
    put_all(store, *records[:30])
    put_all(store, *records[30:])
    expected = [
        r["prompt_id"] for r in sorted(records, key=lambda r: r["submitted_at"], reverse=True)
    ]
    view = store.load()
    assert list(view.newest_first()) == expected
    page = [r["prompt_id"] for _, r in zip(range(7), store.load().newest(), strict=False)]
    assert page == expected[:7]


def test_records_in_history_can_be_changed_and_removed(store: Store) -> None:
    put_all(store, *(rec(f"h{i:04d}-{i:02d}", "success") for i in range(20)))
    with store.transaction() as tasks:
        old = tasks.find("h0003")
        old["labels"] = {"seen": "yes"}
        tasks.put(old)
        tasks.remove("h0011-11")
    with store.transaction() as tasks:  # put without reading first: still one record
        tasks.put(rec("h0005-05", "success", note="replaced"))
    view = store.load()
    assert view["h0003-03"]["labels"] == {"seen": "yes"}
    assert view["h0005-05"]["note"] == "replaced"
    assert "h0011-11" not in view
    ids = [r["prompt_id"] for r in view.values()]
    assert len(ids) == len(set(ids)) == 19
    assert len(list(view.newest())) == 19


def test_changes_counter_moves_with_committed_changes_only(store: Store) -> None:
    before = store.changes()
    with store.transaction() as tasks:
        tasks.get("anything")
    assert store.changes() == before
    put_all(store, rec("c-0001-01"))
    after = store.changes()
    assert after > before
    with pytest.raises(ZeroDivisionError), store.transaction() as tasks:
        tasks.put(rec("c-0002-02"))
        raise ZeroDivisionError
    assert store.changes() == after


GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64}}}


def test_workflows_by_content(store: Store) -> None:
    ref = store.store_workflow(GRAPH)
    assert ref.startswith("sha256:") and len(ref) == 71
    reordered = {"1": {"inputs": {"height": 64, "width": 64}, "class_type": "EmptyImage"}}
    assert store.store_workflow(reordered) == ref
    assert store.load_workflow(ref) == GRAPH
    other = store.store_workflow({"2": {"class_type": "X", "inputs": {}}})
    assert other != ref
    with pytest.raises(LedgerError, match="0000"):
        store.load_workflow("sha256:" + "0" * 64)
    assert store.prune_workflows({ref, other}, min_age=0.0) == []
    assert store.prune_workflows({ref}, min_age=3600.0) == []  # recent: kept
    assert store.prune_workflows({ref}, min_age=0.0) == [other]
    assert store.load_workflow(ref) == GRAPH
    with pytest.raises(LedgerError):
        store.load_workflow(other)


def test_leases_have_one_holder_until_released_or_expired(store: Store) -> None:
    assert store.lease("job-1") is None
    assert store.claim_leases(["job-1"], "host1:100", ttl=60) == {"job-1"}
    assert store.claim_leases(["job-1"], "host2:200", ttl=60) == set()
    held = store.lease("job-1")
    assert held is not None and held.owner == "host1:100" and held.name == "job-1"
    assert store.claim_leases(["job-1"], "host1:100", ttl=120) == {"job-1"}  # renewed
    assert store.claim_leases(["job-1"], "host2:200", ttl=60) == set()
    renewed = store.lease("job-1")
    assert renewed is not None and renewed.expires_at > held.expires_at
    assert store.release_leases(["job-1"], "host2:200") == set()
    assert store.release_leases(["job-1"], "host1:100") == {"job-1"}
    assert store.lease("job-1") is None
    assert store.claim_leases(["job-1"], "host2:200", ttl=60) == {"job-1"}
    # An expired lease (ttl 0: expired at once) may be taken by anyone.
    assert store.claim_leases(["job-2"], "host1:100", ttl=0) == {"job-2"}
    assert store.lease("job-2") is None
    assert store.claim_leases(["job-2"], "host2:200", ttl=60) == {"job-2"}
    assert store.lease("job-2").owner == "host2:200"  # type: ignore[union-attr]
    assert store.lease("job-1").owner == "host2:200"  # type: ignore[union-attr]


def test_many_leases_are_claimed_renewed_and_released_in_one_call(store: Store) -> None:
    assert store.claim_leases(["b", "a"], "host2:200", ttl=60) == {"a", "b"}
    # Of a batch, the free ones and the caller's own are taken, the others' are not.
    assert store.claim_leases(["a", "b", "c", "c"], "host1:100", ttl=60) == {"c"}
    assert store.claim_leases(["a", "b", "c"], "host2:200", ttl=60) == {"a", "b"}
    assert store.release_leases(["a", "b", "c"], "host2:200") == {"a", "b"}
    assert store.lease("a") is None and store.lease("c").owner == "host1:100"  # type: ignore[union-attr]
    assert store.claim_leases([], "host1:100", ttl=60) == set()
    assert store.release_leases([], "host1:100") == set()


def test_leases_survive_record_transactions(store: Store) -> None:
    assert store.claim_leases(["watch:x"], "me", ttl=60)
    put_all(store, *(rec(f"l{i:04d}-{i:02d}", "success") for i in range(10)))
    assert store.lease("watch:x") is not None


def test_input_map_is_per_server_and_content(store: Store) -> None:
    sha = "ab" * 32
    assert store.input_name("http://gpu1:8188", sha) is None
    store.remember_input("http://gpu1:8188", sha, {"name": "cat.png", "subfolder": "in"})
    store.remember_input("http://gpu2:8188", sha, {"name": "cat (1).png", "subfolder": ""})
    assert store.input_name("http://gpu1:8188", sha) == {"name": "cat.png", "subfolder": "in"}
    assert store.input_name("http://gpu2:8188", sha)["name"] == "cat (1).png"  # type: ignore
    store.remember_input("http://gpu1:8188", sha, {"name": "cat2.png", "subfolder": "in"})
    assert store.input_name("http://gpu1:8188", sha)["name"] == "cat2.png"  # type: ignore
    assert store.input_name("http://gpu1:8188", "cd" * 32) is None


# -- many processes at once ------------------------------------------------------------------

CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from comfyctl.store import open_store
store, me, what = open_store(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
if what == "write":
    for i in range(25):
        with store.transaction() as tasks:
            status = "success" if i % 2 else "pending"
            tasks.put({"prompt_id": f"w{me}-{i:02d}", "server_url": "http://h:1",
                       "status": status, "submitted_at": f"2026-01-01T{i:02d}", "by": me})
elif what == "claim":
    won = False
    with store.transaction() as tasks:
        record = tasks.get("shared")
        if record is not None and not record.get("claimed_by"):
            record["claimed_by"] = me
            tasks.put(record)
            won = True
    print("won" if won else "lost")
elif what == "lease":
    print("won" if store.claim_leases(["the-socket"], me, 60) else "lost")
"""


def run_children(spec: str, what: str, count: int = 8) -> list[str]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(SRC), spec, str(n), what],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]
    outs = []
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n", (
                proc.stderr.read() if proc.stderr else ""
            )
        for proc in procs:  # released together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.close()
        for proc in procs:
            assert proc.stdout is not None and proc.stderr is not None
            out, err = proc.stdout.read(), proc.stderr.read()
            assert proc.wait(timeout=120) == 0, err
            outs.append(out.strip())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    return outs


@pytest.mark.faults
def test_eight_processes_writing_lose_nothing(spec: str) -> None:
    run_children(spec, "write")
    view = open_store(spec).load()
    ids = [r["prompt_id"] for r in view.values()]
    assert len(ids) == len(set(ids)) == 200
    assert set(ids) == {f"w{me}-{i:02d}" for me in range(8) for i in range(25)}
    assert all(view[pid]["by"] == pid[1] for pid in ids)


@pytest.mark.faults
def test_a_field_claimed_in_a_transaction_is_claimed_once(spec: str) -> None:
    put_all(open_store(spec), rec("shared", "lost"))
    outcomes = run_children(spec, "claim")
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    winner = outcomes.index("won")
    assert open_store(spec).get("shared")["claimed_by"] == str(winner)  # type: ignore[index]


@pytest.mark.faults
def test_a_lease_claimed_by_eight_processes_has_one_holder(spec: str) -> None:
    outcomes = run_children(spec, "lease")
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    held = open_store(spec).lease("the-socket")
    assert held is not None and held.owner == str(outcomes.index("won"))


# -- a record edited by hand ------------------------------------------------------------------

# Each: fields written over a valid record, as a person editing the ledger might.
HAND_EDITS = {
    "progress-a-string": {"progress": "x"},
    "progress-value-a-string": {"progress": {"value": "x", "max": 4, "percent": 1.0}},
    "submitted_at-a-number": {"submitted_at": 12},
    "started_at-a-number": {"started_at": 5},
    "outputs-a-string": {"outputs": "x"},
    "outputs-of-numbers": {"outputs": [5]},
    "output-url-a-number": {"outputs": [{"filename": "a.png", "url": 5}]},
    "labels-a-list": {"labels": [1]},
    "label-value-a-number": {"labels": {"batch": 7}},
    "error-a-string": {"error": "str"},
    "server-null": {"server": None},
    "server_url-a-number": {"status": "running", "server_url": 7},
    "server_url-not-http": {"server_url": "gpu1:8188"},
    "warnings-a-string": {"warnings": "x"},
    "client_id-a-number": {"client_id": 3},
    "progress_history-a-dict": {"progress_history": {}},
    "recovered-a-string": {"recovered": "yes"},
}
EDITED = "edit0000-0001"


def hand_edit(spec: str, prompt_id: str, fields: dict[str, Any]) -> None:
    """Overwrite fields of one record where it is stored, bypassing comfyctl."""
    import json

    if spec.startswith("postgresql"):
        import psycopg

        with psycopg.connect(spec, autocommit=True) as conn:
            conn.execute(
                "UPDATE comfyctl_tasks SET record = record || %s::jsonb WHERE prompt_id = %s",
                (json.dumps(fields), prompt_id),
            )
        return
    path = Path(spec)
    lines = path.read_text().split("\n")
    head = json.dumps(prompt_id) + ":"
    (n,) = [i for i, line in enumerate(lines) if line.startswith(head)]
    comma = "," if lines[n].endswith(",") else ""
    record = json.loads(lines[n][len(head) :].removesuffix(","))
    lines[n] = head + json.dumps({**record, **fields}, separators=(",", ":")) + comma
    path.write_text("\n".join(lines))


def valid_record(prompt_id: str) -> dict[str, Any]:
    from comfyctl.records import new_record

    record = new_record(prompt_id, "gpu1", "http://127.0.0.1:9", "c1", None, {"batch": "7"})
    record["status"] = "error"
    record["error"] = {"type": "x", "message": "it failed", "node_id": None, "node_type": None}
    return record


@pytest.mark.parametrize("edit", list(HAND_EDITS), ids=list(HAND_EDITS))
def test_a_record_of_the_wrong_shape_is_corrupt(spec: str, store: Store, edit: str) -> None:
    put_all(store, valid_record(EDITED), valid_record("good0000-0002"))
    hand_edit(spec, EDITED, HAND_EDITS[edit])
    with pytest.raises(LedgerError, match=EDITED):
        open_store(spec).get(EDITED)


@pytest.mark.parametrize("edit", ["progress-a-string", "labels-a-list"])
def test_commands_on_a_record_of_the_wrong_shape_exit_7_not_a_traceback(
    spec: str, store: Store, invoke: Any, edit: str
) -> None:
    """Every command reads records through the store's one check (the test above covers
    each field): each ends with exit 7 naming the record, never a traceback."""
    put_all(store, valid_record(EDITED), valid_record("good0000-0002"))
    hand_edit(spec, EDITED, HAND_EDITS[edit])
    for args in (
        ("history",),
        ("history", EDITED),
        ("history", "--csv"),
        ("watch", EDITED),
        ("cancel", EDITED),
        ("metrics",),
    ):
        result = invoke("--ledger", spec, *args)
        assert result.exit_code == 7, (args, result.stdout, result.stderr)
        assert EDITED in result.stderr and "Traceback" not in result.stderr


def test_a_running_record_of_the_wrong_shape_is_exit_7_in_a_real_process(
    spec: str, store: Store, run_comfyctl: Any
) -> None:
    """The fleet commands read records in worker threads: the error must still reach the
    exit code rather than a thread's traceback."""
    put_all(store, {**valid_record(EDITED), "status": "running", "error": None})
    hand_edit(spec, EDITED, {"server_url": 7})
    for args in (("debug-tasks",), ("metrics",), ("detect-stuck",)):
        proc = run_comfyctl("--ledger", spec, *args, timeout=60)
        assert proc.returncode == 7, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
