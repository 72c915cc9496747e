"""A PostgreSQL ledger shared by several hosts, simulated by processes with their own config
and data dirs (so nothing is shared but the database), against real emulated servers.

Host 1 names the ledger with COMFYCTL_LEDGER, host 2 with ``ledger = "${TEAM_LEDGER}"`` in
its config: both ways a team would set it up.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from workflows import slow_graph

from comfyctl.records import new_record
from comfyctl.store import open_store

REPO = Path(__file__).resolve().parents[1]
Host = Callable[..., subprocess.CompletedProcess[str]]


def host_env(tmp_path: Path, n: int, url: str) -> dict[str, str]:
    home = tmp_path / f"host{n}"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "COMFYCTL_CONFIG": str(home / "c.toml"),
    }
    env.pop("COMFYCTL_LEDGER", None)
    if n == 1:
        env["COMFYCTL_LEDGER"] = url
        (home / "c.toml").write_text("")
    else:
        env["TEAM_LEDGER"] = url
        (home / "c.toml").write_text('ledger = "${TEAM_LEDGER}"\n')
    return env


@pytest.fixture
def hosts(postgres_ledger: str, tmp_path: Path) -> dict[int, dict[str, str]]:
    return {n: host_env(tmp_path, n, postgres_ledger) for n in (1, 2)}


def on(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "comfyctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "comfyctl", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def workflow(tmp_path: Path, steps: int = 2, seconds: float = 0.01) -> str:
    path = tmp_path / f"wf-{steps}-{seconds}.json"
    path.write_text(json.dumps(slow_graph(steps, seconds)))
    return str(path)


def server_ids(url: str) -> list[str]:
    queue = requests.get(url + "/queue", timeout=5).json()
    history = requests.get(url + "/history", timeout=5).json()
    return [i[1] for i in queue["queue_running"] + queue["queue_pending"]] + list(history)


def records(url: str) -> dict[str, dict[str, Any]]:
    return {r["prompt_id"]: r for r in open_store(url).load().values()}


def test_host_2_watches_cancels_and_shows_jobs_submitted_on_host_1(
    hosts, emulator, tmp_path, postgres_ledger
):
    quick = on(hosts[1], "submit", workflow(tmp_path), "-s", emulator.url)
    assert quick.returncode == 0, quick.stderr
    (pid,) = quick.stdout.split()
    slow = on(hosts[1], "submit", workflow(tmp_path, 400, 0.05), "-s", emulator.url)
    (slow_pid,) = slow.stdout.split()

    watched = on(hosts[2], "watch", pid, "--json", "--timeout", "60")
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout.splitlines()[-1])["status"] == "success"
    shown = on(hosts[2], "history", pid[:8], "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["server_url"] == emulator.url and doc["status"] == "success"
    cancelled = on(hosts[2], "cancel", slow_pid, "--nl")
    assert cancelled.returncode == 0, cancelled.stderr
    assert records(postgres_ledger)[slow_pid]["status"] in ("cancelled", "interrupted")
    # Host 1 sees what host 2 did.
    listed = on(hosts[1], "history", "--json")
    assert {t["prompt_id"]: t["status"] for t in json.loads(listed.stdout)["tasks"]}[
        pid
    ] == "success"
    assert not (tmp_path / "host2" / "data").exists()  # host 2 kept nothing on its disk


@pytest.mark.faults
def test_lost_jobs_are_resubmitted_once_when_two_hosts_recover_at_once(
    hosts, emulator, tmp_path, postgres_ledger
):
    out = on(
        hosts[1],
        "submit",
        workflow(tmp_path, 200, 0.05),
        "-s",
        emulator.url,
        "--count",
        "6",
        "--vary-seed",
    )
    assert out.returncode == 0, out.stderr
    lost = out.stdout.split()
    emulator.restart()  # the server forgets every job
    detectors = [start(hosts[n], "detect-stuck", "--nl") for n in (1, 2)]
    for proc in detectors:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 6, stderr
        assert {json.loads(line)["prompt_id"] for line in stdout.splitlines()} == set(lost)
    recoverers = [start(hosts[n], "recover", "--resubmit", "--nl") for n in (1, 2, 1, 2)]
    for proc in recoverers:
        proc.communicate(timeout=120)
    ledger = records(postgres_ledger)
    for pid in lost:
        children = [r for r in ledger.values() if r.get("resubmitted_from") == pid]
        assert len(children) == 1, f"{pid} was resubmitted {len(children)} times"
        assert ledger[pid]["superseded_by"] == children[0]["prompt_id"]
    received = server_ids(emulator.url)
    assert len(received) == len(set(received)) == len(lost)
    assert set(received) == {r["prompt_id"] for r in ledger.values() if r.get("resubmitted_from")}


@pytest.mark.faults
def test_eight_processes_on_two_hosts_submitting_at_once(
    hosts, emulator, tmp_path, postgres_ledger, fault_counts
):
    wf = workflow(tmp_path)
    procs = [
        start(hosts[1 + n % 2], "submit", wf, "-s", emulator.url, "--count", "3", "--vary-seed")
        for n in range(8)
    ]
    printed = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        printed += stdout.split()
    assert len(printed) == len(set(printed)) == 24
    ledger = records(postgres_ledger)
    assert set(ledger) == set(printed)
    emulator.wait_idle(timeout=30)
    assert sorted(server_ids(emulator.url)) == sorted(printed)
    fault_counts["concurrent processes on two hosts"] = 8


@pytest.mark.faults
def test_sigkill_of_submit_leaves_no_ghost_and_no_duplicate(
    hosts, emulator, tmp_path, postgres_ledger, fault_counts
):
    rng = random.Random(5)
    wf = workflow(tmp_path, 1, 0.001)
    trials = 20
    for trial in range(trials):
        proc = start(
            hosts[1 + trial % 2], "submit", wf, "-s", emulator.url, "--count", "3", "--vary-seed"
        )
        time.sleep(rng.uniform(0.2, 0.8))
        proc.send_signal(signal.SIGKILL)
        stdout, _ = proc.communicate()
        assert set(stdout.split()) <= set(records(postgres_ledger))
    fault_counts["SIGKILL trials: submit on PostgreSQL"] = trials
    emulator.wait_idle(timeout=30)
    received = server_ids(emulator.url)
    assert len(received) == len(set(received))
    assert set(received) <= set(records(postgres_ledger)), "a job the server got is not recorded"
    on(hosts[2], "recover", "--resubmit", "--nl")
    ledger = records(postgres_ledger)
    parents = [r["resubmitted_from"] for r in ledger.values() if r.get("resubmitted_from")]
    assert len(parents) == len(set(parents))
    assert not set(parents) & set(received), "a job the server had was sent again"


# -- errors ------------------------------------------------------------------------------------


def test_servers_shows_the_database_ledger_with_the_password_masked(hosts, postgres_ledger):
    password = postgres_ledger.split(":")[2].split("@")[0]
    for n in (1, 2):
        shown = on(hosts[n], "servers", "--json")
        assert shown.returncode == 0, shown.stderr
        ledger = json.loads(shown.stdout)["ledger"]
        assert ledger.startswith("postgresql://postgres:***@127.0.0.1:")
        assert password not in shown.stdout + shown.stderr
        table = on(hosts[n], "servers")
        assert "postgresql://postgres:***@" in table.stderr and password not in table.stderr


@pytest.mark.parametrize("problem", ["wrong-password", "nobody-listening", "no-database"])
def test_an_unusable_database_is_one_sentence_and_exit_7(hosts, postgres_ledger, problem, tmp_path):
    import socket

    base, _, name = postgres_ledger.rpartition("/")
    password = base.split(":")[2].split("@")[0]
    if problem == "wrong-password":
        url = base.replace(password, "not-the-Secret-42") + "/" + name
    elif problem == "no-database":
        url = base + "/no_such_database"
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"postgresql://postgres:{password}@127.0.0.1:{port}/x"
    env = host_env(tmp_path, 3, url)
    for args in (["history"], ["submit", workflow(tmp_path), "-s", "http://127.0.0.1:9"]):
        proc = on(env, *args)
        assert proc.returncode == 7, proc.stderr
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot be used" in lines[0], proc.stderr
        assert "postgresql://postgres:***@127.0.0.1" in lines[0]
        assert password not in proc.stderr and "not-the-Secret-42" not in proc.stderr


def test_without_psycopg_the_error_names_the_extra_to_install(hosts):
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.argv = ['comfyctl', 'history'];"
        "from comfyctl.cli import main; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=hosts[1],
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 7
    assert "pip install 'comfyctl[postgres]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_database_migrated_by_a_newer_comfyctl_is_refused(hosts, postgres_ledger):
    import psycopg

    assert on(hosts[1], "history").returncode == 0  # creates the tables
    with psycopg.connect(postgres_ledger, autocommit=True) as conn:
        conn.execute("INSERT INTO comfyctl_migrations (name) VALUES ('9999-from-the-future')")
    proc = on(hosts[2], "history")
    assert proc.returncode == 7
    assert "newer comfyctl" in proc.stderr


def test_a_refused_database_stays_refused_on_the_same_store(postgres_ledger):
    # A long-lived process (a watch's threads retry) must not go on with a connection
    # whose set-up (the migration check) failed.
    import psycopg

    from comfyctl.errors import LedgerCorrupt

    open_store(postgres_ledger).load()  # creates the tables
    with psycopg.connect(postgres_ledger, autocommit=True) as conn:
        conn.execute("INSERT INTO comfyctl_migrations (name) VALUES ('9999-from-the-future')")
    store = open_store(postgres_ledger)
    for _ in range(2):
        with pytest.raises(LedgerCorrupt, match="newer comfyctl"):
            store.load()


def test_tables_are_created_once_and_recorded(postgres_ledger):
    import psycopg

    from comfyctl.pgstore import MIGRATIONS

    open_store(postgres_ledger).load()
    open_store(postgres_ledger).load()
    with psycopg.connect(postgres_ledger) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM comfyctl_migrations")]
    assert names == [name for name, _ in MIGRATIONS]


def test_expired_leases_do_not_pile_up(postgres_ledger, monkeypatch):
    """A lease whose holder died (a watch killed) is never released: a later claim clears
    it (now and then, once it has been expired a while), so the table holds only live
    leases."""
    import psycopg

    from comfyctl import pgstore

    monkeypatch.setattr(pgstore, "EXPIRED_LEASE_GRACE", 0.0)
    monkeypatch.setattr(pgstore, "PRUNE_LEASES_EVERY", 0.0)
    store = open_store(postgres_ledger)
    assert store.claim_leases({"listen:dead-1", "listen:dead-2"}, "host/a:1", 0.05) == {
        "listen:dead-1",
        "listen:dead-2",
    }
    time.sleep(0.2)
    assert store.claim_leases({"listen:live"}, "host/b:2", 5.0) == {"listen:live"}
    with psycopg.connect(postgres_ledger) as conn:
        names = sorted(n for (n,) in conn.execute("SELECT name FROM comfyctl_leases"))
    assert names == ["listen:live"]
    assert store.lease("listen:live") is not None


def _cut_off(how: str, postgres_server: Any, url: str) -> None:
    import psycopg

    if how == "restarted":
        if postgres_server.base is None:
            pytest.skip("the server given by COMFYCTL_TEST_POSTGRES is not ours to restart")
        postgres_server.restart()
        return
    with psycopg.connect(url, autocommit=True) as conn:  # what a pooler or an admin does
        # This test's database only: a shared server (COMFYCTL_TEST_POSTGRES) has others.
        ours = (
            "FROM pg_stat_activity WHERE application_name = 'comfyctl' "
            "AND datname = current_database() AND pid <> pg_backend_pid()"
        )
        conn.execute(f"SELECT pg_terminate_backend(pid) {ours}")
        deadline = time.monotonic() + 10
        while conn.execute(f"SELECT count(*) {ours}").fetchone()[0]:
            assert time.monotonic() < deadline, "the sessions did not end"
            time.sleep(0.01)  # gone: it said goodbye


@pytest.mark.parametrize("how", ["terminated", "restarted"])
def test_a_store_whose_connection_was_cut_reconnects(postgres_server, postgres_ledger, how):
    # A watch holds its store for hours: a database restart in between must not end it.
    store = open_store(postgres_ledger)
    with store.transaction() as tasks:
        tasks.put(new_record("job", "s", "http://127.0.0.1:1", "c", None))
    assert store.claim_leases(["listen:job"], "me", 30) == {"listen:job"}
    steps = [
        lambda: store.get("job"),
        lambda: store.claim_leases(["listen:job"], "me", 30),
        lambda: store.lease("listen:job"),
        lambda: len(store.load()),
        lambda: store.changes(),
    ]
    for step in steps:
        _cut_off(how, postgres_server, postgres_ledger)
        assert step()
    _cut_off(how, postgres_server, postgres_ledger)
    with store.transaction() as tasks:
        record = tasks["job"]
        record["status"] = "pending"
        tasks.put(record)
    assert store.get("job")["status"] == "pending"


def test_a_database_down_for_a_moment_is_waited_for_then_given_up_on(
    postgres_server, postgres_ledger, monkeypatch
):
    """A restart takes a second or two: a store that was working (a watch's) waits for it,
    up to the bound, then says so; and says so again at once, not after another wait."""
    from comfyctl import pgstore
    from comfyctl.errors import LedgerUnavailable
    from comfyctl.pgstore import PostgresStore

    if postgres_server.base is None:
        pytest.skip("the server given by COMFYCTL_TEST_POSTGRES is not ours to stop")
    monkeypatch.setattr(pgstore, "STATEMENT_MARGIN", 0.5)  # a bound of 3 s
    store = PostgresStore(postgres_ledger, lock_timeout=0.5)
    with store.transaction() as tasks:
        tasks.put(new_record("job", "s", "http://127.0.0.1:1", "c", None))
    postgres_server.stop()
    back = threading.Timer(1.5, postgres_server.start)
    back.start()
    try:
        assert store.get("job")["prompt_id"] == "job"  # waited through the restart
        assert store.claim_leases(["listen:job"], "me", 5) == {"listen:job"}
    finally:
        back.join()
    postgres_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            store.get("job")
        assert store.bound - 0.5 < time.monotonic() - started < store.bound + 2
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            store.get("job")  # given up on just now: not waited for again
        assert time.monotonic() - started < 1
    finally:
        postgres_server.start()
    time.sleep(pgstore.RETRY_AFTER)
    assert store.get("job")["prompt_id"] == "job"  # tried again, and back


def test_a_connection_lost_mid_call_is_said_so_and_the_next_call_reconnects(
    postgres_server, postgres_ledger
):
    # What a watch's write meets when the database restarts under it: the write did not
    # happen (LedgerInterrupted, which watch makes again), the next call reconnects.
    import psycopg

    from comfyctl.errors import LedgerInterrupted

    store = open_store(postgres_ledger)
    store.load()
    killer = threading.Timer(0.5, _cut_off, ("terminated", postgres_server, postgres_ledger))
    killer.start()
    try:
        with pytest.raises(LedgerInterrupted):
            store._one("SELECT pg_sleep(5)")
    finally:
        killer.join()
    assert store.changes() == 0
    with psycopg.connect(postgres_ledger) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_watch_outlives_database_restarts(hosts, emulator, tmp_path, postgres_server):
    if postgres_server.base is None:
        pytest.skip("the server given by COMFYCTL_TEST_POSTGRES is not ours to restart")
    submitted = on(hosts[1], "submit", workflow(tmp_path, 60, 0.1), "-s", emulator.url)
    (pid,) = submitted.stdout.split()
    watching = start(hosts[2], "watch", pid, "--json", "--poll-interval", "0.5")
    first = watching.stdout.readline()  # it is following (a first connection is tried once)
    assert first, watching.stderr.read()
    for _ in range(3):  # the database down for a moment, three times over a 6 s job
        time.sleep(1.0)
        postgres_server.stop()
        time.sleep(0.5)
        postgres_server.start()
    out, err = watching.communicate(timeout=60)
    assert watching.returncode == 0, err
    assert json.loads((first + out).splitlines()[-1])["status"] == "success"
    assert records(hosts[1]["COMFYCTL_LEDGER"])[pid]["status"] == "success"


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_ctrl_c_during_a_database_outage_ends_watch_at_once(
    hosts, emulator, tmp_path, postgres_server, outage
):
    """Ctrl-C is not held up by the last writes when the database is gone or frozen (they
    would wait up to the bound, 17 s): what they held is the servers' to tell again."""
    if postgres_server.base is None:
        pytest.skip("the server given by COMFYCTL_TEST_POSTGRES is not ours to stop")
    submitted = on(hosts[1], "submit", workflow(tmp_path, 200, 0.05), "-s", emulator.url)
    (pid,) = submitted.stdout.split()
    watching = start(hosts[2], "watch", pid, "--json", "--poll-interval", "0.5")
    assert watching.stdout.readline(), watching.stderr.read()  # it is following
    outage_over = contextlib.ExitStack()
    if outage == "stopped":
        postgres_server.stop()
        outage_over.callback(postgres_server.start)
    else:
        outage_over.enter_context(postgres_server.frozen())
    with outage_over:
        time.sleep(1.5)  # progress heard meanwhile waits to be written
        started = time.monotonic()
        watching.send_signal(signal.SIGINT)
        _, err = watching.communicate(timeout=60)
        took = time.monotonic() - started
    assert watching.returncode == 130, err
    assert took < 5, f"Ctrl-C took {took:.1f} s"
    assert "Traceback" not in err


def test_an_interrupt_that_cut_a_wait_is_raised_however_the_wait_ended(postgres_ledger):
    """The signal handler cut the main thread's wait, then the caller's own error ended the
    transaction: the interrupt is what comes out, once, and the store works after it."""
    from comfyctl.pgstore import PostgresStore

    store = PostgresStore(postgres_ledger)
    store.load()
    with pytest.raises(KeyboardInterrupt), store.transaction():
        store._interrupted = KeyboardInterrupt  # what _interrupt sets as it cuts
        raise ValueError("the caller's own error")
    assert store._interrupted is None
    assert store.get("nothing") is None  # a new connection, no interrupt left over


def test_the_signal_handler_never_waits_for_a_lock_the_main_thread_holds(postgres_ledger):
    from comfyctl import pgstore

    store = pgstore.PostgresStore(postgres_ledger)
    store.load()
    with store._wait_lock:  # e.g. the signal came inside _drop
        assert pgstore.interrupt_waits() is False
    with pgstore._WATCHDOG._lock:
        assert pgstore.interrupt_waits() is False


def test_a_frozen_database_is_given_up_on_not_waited_for_forever(
    postgres_server, postgres_ledger, monkeypatch
):
    # SIGSTOPped: statement_timeout is the server's, and the server is not running.
    from comfyctl import pgstore
    from comfyctl.errors import LedgerUnavailable
    from comfyctl.pgstore import PostgresStore, client_bound

    if postgres_server.base is None:
        pytest.skip("the server given by COMFYCTL_TEST_POSTGRES is not ours to freeze")
    monkeypatch.setattr(pgstore, "STATEMENT_MARGIN", 0.5)  # a bound of 3 s, not 17
    monkeypatch.setattr(pgstore, "RETRY_AFTER", 0.5)  # given up on: not tried again before
    store = PostgresStore(postgres_ledger, lock_timeout=0.5)
    with store.transaction() as tasks:
        tasks.put(new_record("job", "s", "http://127.0.0.1:1", "c", None))
    bound = client_bound(store.lock_timeout)
    steps = {
        "read": lambda: store.get("job"),
        "a transaction's start": lambda: store.transaction().__enter__(),
        "a lease": lambda: store.claim_leases(["listen:job"], "me", 5),
        "a view's read": lambda: len(store.load()),
    }
    for name, step in steps.items():
        time.sleep(pgstore.RETRY_AFTER)
        assert store.get("job")["prompt_id"] == "job"  # connected, and answered
        view = store.load() if name == "a view's read" else None
        with postgres_server.frozen():
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable, match="did not answer"):
                step() if view is None else len(view)
            assert time.monotonic() - started < bound + 2, name
    time.sleep(pgstore.RETRY_AFTER)
    assert store.get("job")["prompt_id"] == "job"  # answered again: a new connection
    with store.transaction() as tasks:  # a slow caller inside a transaction is not cut off
        time.sleep(bound + 1)
        tasks.put({**tasks["job"], "status": "pending"})
    assert store.get("job")["status"] == "pending"


# -- passwords with reserved characters ---------------------------------------------------------

RESERVED_PASSWORD = "p@ss/w#rd:1%"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://studio2:{RESERVED_PASSWORD}@127.0.0.1:18555/ledger",
        "postgresql://studio2:e@127.0.0.1:18555/ledger",
        "postgres://studio2:a:b@c@db.lan/ledger?sslmode=require",
        "postgresql://db.lan/ledger?user=studio2&password=p@ss/w%23rd",
    ],
)
def test_mask_url_never_shows_any_part_of_the_password(url: str) -> None:
    from comfyctl.store import mask_url

    masked = mask_url(url)
    assert "***" in masked
    for part in ("p@ss", "ss/w", "w#rd", "rd:1", ":e@", "a:b", "b@c", "w%23"):
        assert part not in masked, masked
    assert "studio2" in masked and ("127.0.0.1" in masked or "db.lan" in masked)


def test_mask_url_keeps_a_url_without_password() -> None:
    from comfyctl.store import mask_url

    assert mask_url("postgresql://studio2@db.lan:5432/ledger") == (
        "postgresql://studio2@db.lan:5432/ledger"
    )


@pytest.fixture
def studio2(postgres_server, postgres_ledger: str) -> str:
    """A new role (scram) whose password is of reserved characters, owning a fresh database;
    returns "role@127.0.0.1:port/db" (the URL without scheme and password)."""
    import psycopg

    hostport_db = postgres_ledger.rsplit("@", 1)[1]
    db = hostport_db.rsplit("/", 1)[1]
    role = f"studio2_{db}"  # one per database: a role owning a database cannot be dropped
    with psycopg.connect(postgres_ledger, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{RESERVED_PASSWORD}'")  # no quote in it
        conn.execute(f'ALTER DATABASE "{db}" OWNER TO {role}')
    return f"{role}@{hostport_db}"


def test_a_password_with_reserved_characters_through_var_is_refused_never_shown(
    studio2: str, tmp_path: Path
) -> None:
    role, where = studio2.split("@")
    env = host_env(tmp_path, 3, "unused")
    (tmp_path / "host3" / "c.toml").write_text(f'ledger = "postgresql://{role}:${{PW2}}@{where}"\n')
    env["PW2"] = RESERVED_PASSWORD
    for args in (["servers"], ["servers", "--json"], ["history"]):
        proc = on(env, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "percent-encoded" in lines[0] and "PGPASSWORD" in lines[0]
        for part in ("p@ss", "ss/w", "w#rd", "rd:1", "percent-encoded token"):
            assert part not in proc.stderr, proc.stderr


def test_a_percent_encoded_password_or_pgpassword_works(studio2: str, tmp_path: Path) -> None:
    from urllib.parse import quote

    role, where = studio2.split("@")
    env = host_env(tmp_path, 3, "unused")
    (tmp_path / "host3" / "c.toml").write_text(f'ledger = "postgresql://{role}:${{PW2}}@{where}"\n')
    env["PW2"] = quote(RESERVED_PASSWORD, safe="")
    proc = on(env, "servers", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ledger"] == f"postgresql://{role}:***@{where}"
    assert on(env, "history").returncode == 0
    env = {
        **host_env(tmp_path, 4, f"postgresql://{studio2}"),
        "PGPASSWORD": RESERVED_PASSWORD,
    }
    proc = on(env, "history")
    assert proc.returncode == 0, proc.stderr
    assert RESERVED_PASSWORD not in proc.stdout + proc.stderr


def test_a_short_wrong_password_garbles_nothing_and_is_not_shown(postgres_ledger, tmp_path):
    base, _, name = postgres_ledger.rpartition("/")
    url = f"postgresql://postgres:e@{base.rsplit('@', 1)[1]}/{name}"
    proc = on(host_env(tmp_path, 3, url), "history")
    assert proc.returncode == 7, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be used" in lines[0], proc.stderr
    assert lines[0].count("***") == 1 and "postgresql://postgres:***@127.0.0.1" in lines[0]


# -- a database that does not answer ----------------------------------------------------------


@contextlib.contextmanager
def table_locked(url: str, seconds: float = 8.0) -> Iterator[None]:
    """Another session holds ACCESS EXCLUSIVE on comfyctl_tasks (released after ``seconds``
    at the latest, so that a comfyctl that waits forever still ends the test)."""
    import psycopg

    holder = psycopg.connect(url)
    holder.execute("LOCK TABLE comfyctl_tasks IN ACCESS EXCLUSIVE MODE")
    timer = threading.Timer(seconds, holder.rollback)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        holder.close()


def test_a_read_outside_a_transaction_gives_up_after_the_lock_timeout(
    postgres_ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from comfyctl.errors import LedgerLocked

    open_store(postgres_ledger).load()  # the tables
    monkeypatch.setenv("COMFYCTL_LOCK_TIMEOUT", "1")
    store = open_store(postgres_ledger)
    with table_locked(postgres_ledger):
        with pytest.raises(LedgerLocked):
            store.get("nope")
        with pytest.raises(LedgerLocked):
            len(store.load())


def test_commands_on_a_locked_table_exit_7_in_one_sentence(hosts, postgres_ledger, tmp_path):
    assert on(hosts[1], "history").returncode == 0  # the tables
    env = {**hosts[2], "COMFYCTL_LOCK_TIMEOUT": "1"}
    with table_locked(postgres_ledger, seconds=20):
        for args in (["history"], ["detect-stuck", "--server-timeout", "5"]):
            proc = on(env, *args)
            assert proc.returncode == 7, (args, proc.stdout, proc.stderr)
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and "stayed locked" in lines[0], proc.stderr
