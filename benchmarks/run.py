"""comfyctl benchmarks: prints a table of measured figures (medians over repeated runs).

    python benchmarks/run.py            # everything (a few minutes on 2 cores)
    python benchmarks/run.py --quick    # fewer repetitions, smaller ledgers
    python benchmarks/run.py --stores   # only the ledger stores at 100,000 records
    python benchmarks/run.py --only watch   # one group: startup, ledger, submit, stores,
                                            # watch, fanout, hooks, observers

The package is byte-compiled first, as ``pip install`` leaves it: start-up figures then
measure comfyctl, not the compiler.

Every comparison is measured in the same run on the same machine. Nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comfyctl.config import ServerSpec  # noqa: E402
from comfyctl.emulator import Emulator  # noqa: E402
from comfyctl.ledger import Ledger  # noqa: E402
from comfyctl.records import Observation, apply, new_record  # noqa: E402

GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {
        "class_type": "SlowProgress",
        "inputs": {"image": ["1", 0], "steps": 1, "seconds_per_step": 0.0, "seed": 0},
    },
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "b"}},
}
rows: list[tuple[str, str, str]] = []
WATCH_ATTACH = 2.0  # seconds the watch benchmark's jobs wait for watch to connect


def empty_config(tmp: str, name: str) -> str:
    """A config file with no servers (one named by COMFYCTL_CONFIG must exist)."""
    path = Path(tmp) / name
    path.touch()
    return str(path)


def report(name: str, value: str, note: str = "") -> None:
    rows.append((name, value, note))
    print(f"  {name:<58} {value:>14}  {note}", flush=True)


def median_wall(
    cmd: list[str], runs: int, env: dict | None = None, lines: int | None = None
) -> float:
    """Median wall time of ``cmd``; with ``lines``, each run must print that many lines
    (a fast run that printed nothing measures nothing)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, capture_output=True, check=True, text=True, env={**os.environ, **(env or {})}
        )
        times.append(time.perf_counter() - start)
        if lines is not None and len(proc.stdout.splitlines()) != lines:
            raise SystemExit(f"{' '.join(cmd[2:])} printed {proc.stdout!r}, not {lines} lines")
    return statistics.median(times)


def make_ledger(
    path: Path, count: int, servers: list[str] | None = None, status: str = "success"
) -> Ledger:
    servers = servers or ["http://127.0.0.1:8188"]
    records = {}
    for i in range(count):
        url = servers[i % len(servers)]
        pid = f"{i:08d}-0000-4000-8000-000000000000"
        rec = new_record(
            pid, url.split("://")[1], url, f"comfyctl-{i:032x}", None, {"batch": str(i % 10)}
        )
        # A realistic finished record: progress, a short progress history, one output.
        observations = [
            Observation("progress", pid, url, value=v, max=20, node="2") for v in (5, 10, 15, 20)
        ]
        if status == "success":
            observations.append(
                Observation(
                    "finished",
                    pid,
                    url,
                    outcome="success",
                    outputs={
                        "3": {
                            "images": [
                                {"filename": f"b_{i:05}_.png", "subfolder": "", "type": "output"}
                            ]
                        }
                    },
                )
            )
        for obs in observations:
            apply(rec, obs)
        rec["number"] = i
        if status == "success":  # finished long ago: history, not the live file
            rec["updated_at"] = rec["finished_at"] = "2000-01-01T00:00:00.000+00:00"
        records[pid] = rec
    ledger = Ledger(path)
    with ledger.transaction() as tasks:
        for record in records.values():
            tasks.put(record)
    return ledger


def bench_startup(runs: int) -> None:
    """Each command once per round, round after round: a machine that slows down for a
    while slows every one of them (the figures are ratios to ``import click``)."""
    print("start-up", flush=True)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger.json"
        make_ledger(ledger, 1000)
        env = {"COMFYCTL_LEDGER": str(ledger), "COMFYCTL_CONFIG": empty_config(tmp, "none.toml")}

        def completing(words: str, cword: int) -> dict[str, str]:
            # TAB after "comfyctl " lists the commands; after "comfyctl watch --", its options.
            return {
                **env,
                "_COMFYCTL_COMPLETE": "bash_complete",
                "COMP_WORDS": words,
                "COMP_CWORD": str(cword),
            }

        measures = {
            "click": ([py, "-c", "import click"], {}),
            "help": ([py, "-m", "comfyctl", "--help"], env),
            "names": ([py, "-m", "comfyctl"], completing("comfyctl ", 1)),
            "options": ([py, "-m", "comfyctl"], completing("comfyctl watch --", 2)),
            "history": ([py, "-m", "comfyctl", "history", "--limit", "20"], env),
        }
        times: dict[str, list[float]] = {name: [] for name in measures}
        for _ in range(max(runs, 9)):
            for name, (cmd, cmd_env) in measures.items():
                times[name].append(median_wall(cmd, 1, cmd_env))
    took = {name: statistics.median(values) for name, values in times.items()}
    base = took["click"]
    report("python -c 'import click'", f"{base * 1000:.0f} ms")
    report(
        "comfyctl --help",
        f"{took['help'] * 1000:.0f} ms",
        f"{took['help'] / base:.2f}x import click (target <= 1.5x)",
    )
    for name, what in (("names", "command names"), ("options", "watch's options")):
        report(
            f"completion: {what}",
            f"{took[name] * 1000:.0f} ms",
            f"{took[name] / base:.2f}x import click",
        )
    report(
        "comfyctl history --limit 20 (1k-record ledger)",
        f"{took['history'] * 1000:.0f} ms",
        f"{took['history'] / base:.1f}x import click",
    )


LEDGER_PROBE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
from comfyctl.ledger import Ledger
ledger = Ledger(sys.argv[1])
t0 = time.perf_counter(); records = ledger.load(); active = records.unsettled()
t1 = time.perf_counter()
page = [r for _, r in zip(range(20), records.newest())]  # a newest page, as history shows
t2 = time.perf_counter()
with ledger.transaction() as tasks:  # a submit's write-ahead record
    tasks.put({"prompt_id": "probe", "server_url": "http://h:1", "status": "submitting",
               "submitted_at": "9999"})
t3 = time.perf_counter()
with ledger.transaction() as tasks:
    tasks.remove("probe")
# VmHWM: this process's own peak (ru_maxrss would carry over the parent's across exec).
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"load": t1 - t0, "query": t2 - t1, "update": t3 - t2, "rss_mb": hwm / 1024}))
"""

# Runs comfyctl in-process and reports its own peak memory on stderr's last line.
PEAK_WRAPPER = r"""
import runpy, sys
sys.argv = ["comfyctl", *sys.argv[1:]]
try:
    runpy.run_module("comfyctl", run_name="__main__")
finally:
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    sys.stderr.write(f"\nVmHWM {hwm}\n")
"""


def peak_rss_mb(args: list[str], env: dict[str, str]) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_WRAPPER, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    return int(proc.stderr.rsplit("VmHWM", 1)[1]) / 1024


def ledger_size_mb(path: Path) -> float:
    files = [path, *path.with_name(path.stem + "-history").glob("*.json")]
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def bench_ledger(sizes: list[int], runs: int) -> None:
    print("ledger scale (JSON store, finished records)", flush=True)
    previous = None
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / f"l{size}" / "ledger.json"
            make_ledger(path, size)
            results = [
                json.loads(
                    subprocess.run(
                        [sys.executable, "-c", LEDGER_PROBE, str(path), str(ROOT)],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                )
                for _ in range(runs)
            ]
            med = {k: statistics.median(r[k] for r in results) for k in results[0]}
            mb = ledger_size_mb(path)
            report(
                f"ledger {size:>6} records ({mb:.1f} MB): load + unsettled jobs",
                f"{med['load'] * 1000:.1f} ms",
            )
            report(f"ledger {size:>6} records: newest 20", f"{med['query'] * 1000:.1f} ms")
            report(
                f"ledger {size:>6} records: write-ahead put (locked write)",
                f"{med['update'] * 1000:.1f} ms",
                f"x{med['update'] / previous:.1f} vs previous size" if previous else "",
            )
            report(f"ledger {size:>6} records: peak RSS of the above", f"{med['rss_mb']:.0f} MB")
            previous = med["update"]
            env = {"COMFYCTL_LEDGER": str(path), "COMFYCTL_CONFIG": empty_config(tmp, "x.toml")}
            hist = median_wall(
                [sys.executable, "-m", "comfyctl", "history", "--limit", "20"], runs, env, lines=22
            )
            report(
                f"comfyctl history --limit 20 over {size} records",
                f"{hist * 1000:.0f} ms",
                "target <= 300 ms at 100000" if size == 100_000 else "",
            )
            rss = peak_rss_mb(["history", "--limit", "20"], env)
            report(
                f"comfyctl history --limit 20 over {size} records: peak RSS",
                f"{rss:.0f} MB",
                "target <= 60 MB at 100000" if size == 100_000 else "",
            )


def submit_median(ledger: Any, url: str, jobs: int) -> float:
    """Median in-process submit (write-ahead, POST, ledger) to the emulator at ``url``."""
    from comfyctl.client import ServerClient
    from comfyctl.submission import Submitter

    spec = ServerSpec(name="emu", url=url)
    client = ServerClient(spec)
    submitter = Submitter(ledger, lambda s: client)
    times = []
    for i in range(jobs):
        graph = {**GRAPH, "2": {**GRAPH["2"], "inputs": {**GRAPH["2"]["inputs"], "seed": i}}}
        start = time.perf_counter()
        submitter.submit(graph, spec)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_store_submit(jobs: int, size: int) -> None:
    print(f"submit on an empty ledger and on {size} finished records", flush=True)
    emu = Emulator().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            empty = Ledger(Path(tmp) / "empty" / "ledger.json")
            full = make_ledger(Path(tmp) / "full" / "ledger.json", size)
            submit_median(empty, emu.url, 5)  # warm up the connection and the emulator
            # Interleaved rounds, so that machine noise falls on both alike.
            e, f = [], []
            for _ in range(5):
                e.append(submit_median(empty, emu.url, jobs // 5))
                f.append(submit_median(full, emu.url, jobs // 5))
            e_med, f_med = statistics.median(e), statistics.median(f)
            report("JSON store: submit, empty ledger", f"{e_med * 1000:.1f} ms")
            report(
                f"JSON store: submit, {size} finished records",
                f"{f_med * 1000:.1f} ms",
                f"{f_med / e_med:.2f}x empty (target <= 1.2x)",
            )
    finally:
        emu.stop()


def bench_submit(jobs: int) -> None:
    import requests

    from comfyctl.client import ServerClient
    from comfyctl.submission import Submitter

    print("submit", flush=True)
    emu = Emulator().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Ledger(Path(tmp) / "ledger.json")
            spec = ServerSpec(name="emu", url=emu.url)
            client = ServerClient(spec)
            submitter = Submitter(ledger, lambda s: client)
            session = requests.Session()
            bare, ours = [], []
            for i in range(jobs):
                graph = {
                    **GRAPH,
                    "2": {**GRAPH["2"], "inputs": {**GRAPH["2"]["inputs"], "seed": i}},
                }
                start = time.perf_counter()
                session.post(emu.url + "/prompt", json={"prompt": graph}).raise_for_status()
                bare.append(time.perf_counter() - start)
                start = time.perf_counter()
                submitter.submit(graph, spec)
                ours.append(time.perf_counter() - start)
            b, o = statistics.median(bare), statistics.median(ours)
            report("bare requests.post /prompt", f"{b * 1000:.1f} ms")
            report(
                "comfyctl submit (write-ahead + post + ledger)",
                f"{o * 1000:.1f} ms",
                f"{o / b:.1f}x bare post",
            )
    finally:
        emu.stop()


def fill_postgres(url: str, count: int) -> None:
    """``count`` finished records, written with COPY (a benchmark's shortcut: the rows are
    exactly what the store's put writes)."""
    import psycopg

    from comfyctl.store import open_store

    open_store(url).load()  # creates the tables
    with tempfile.TemporaryDirectory() as tmp:
        records = make_ledger(Path(tmp) / "ledger.json", count).load().values()
    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY comfyctl_tasks (prompt_id, server_url, status, submitted_at, record) FROM STDIN"
        ) as copy,
    ):
        for r in records:
            copy.write_row(
                (r["prompt_id"], r["server_url"], r["status"], r["submitted_at"], json.dumps(r))
            )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE comfyctl_tasks")


def bench_postgres(jobs: int, size: int, runs: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import pgserver

    from comfyctl.store import open_store

    if not pgserver.available():
        print("postgres: skipped (no PostgreSQL server binaries)")
        return
    print("PostgreSQL store (a local server, fsync on)", flush=True)
    emu = Emulator().start()
    try:
        with pgserver.ThrowawayPostgres(fsync=True) as pg, tempfile.TemporaryDirectory() as tmp:
            empty_json = Ledger(Path(tmp) / "ledger.json")
            empty_pg = open_store(pg.database())
            submit_median(empty_json, emu.url, 5)
            submit_median(empty_pg, emu.url, 5)
            j, p = [], []
            for _ in range(5):
                j.append(submit_median(empty_json, emu.url, jobs // 5))
                p.append(submit_median(empty_pg, emu.url, jobs // 5))
            j_med, p_med = statistics.median(j), statistics.median(p)
            report(
                "PostgreSQL store: submit, empty ledger",
                f"{p_med * 1000:.1f} ms",
                f"{p_med / j_med:.2f}x the JSON store's {j_med * 1000:.1f} ms (target <= 1.5x)",
            )
            full = pg.database()
            fill_postgres(full, size)
            env = {"COMFYCTL_LEDGER": full, "COMFYCTL_CONFIG": empty_config(tmp, "x.toml")}
            hist = median_wall(
                [sys.executable, "-m", "comfyctl", "history", "--limit", "20"], runs, env, lines=22
            )
            report(
                f"PostgreSQL store: history --limit 20 over {size} records",
                f"{hist * 1000:.0f} ms",
                "whole process (target <= 300 ms)",
            )
            # The floor under that figure: starting Python and importing the driver.
            floor = median_wall([sys.executable, "-c", "import psycopg"], runs)
            bare = median_wall([sys.executable, "-c", "pass"], runs)
            report(
                "  the floor: python -c 'import psycopg'",
                f"{floor * 1000:.0f} ms",
                f"python -c pass: {bare * 1000:.0f} ms",
            )
            rss = peak_rss_mb(["history", "--limit", "20"], env)
            report(
                f"PostgreSQL store: history --limit 20 over {size} records: peak RSS",
                f"{rss:.0f} MB",
            )
    finally:
        emu.stop()


def slow_job(tmp: str, steps: int, seconds_per_step: float) -> tuple[dict[str, str], Path]:
    """An environment with a fresh ledger and no servers, and a SlowProgress workflow file."""
    env = {
        **os.environ,
        "COMFYCTL_LEDGER": str(Path(tmp) / "ledger.json"),
        "COMFYCTL_CONFIG": empty_config(tmp, "none.toml"),
    }
    graph = {
        **GRAPH,
        "2": {
            **GRAPH["2"],
            "inputs": {
                **GRAPH["2"]["inputs"],
                "steps": steps,
                "seconds_per_step": seconds_per_step,
            },
        },
    }
    wf = Path(tmp) / "wf.json"
    wf.write_text(json.dumps(graph))
    return env, wf


def watch_once(emus: list[Any], env: dict, wf: Path, jobs: int) -> tuple[float, float, list]:
    """One run of the watch scenario: submit ``jobs`` across ``emus``, then watch them all
    to the end. Returns watch's wall time, its CPU seconds and the events it printed."""
    args = [sys.executable, "-m", "comfyctl", "submit", str(wf), "--count", str(jobs)]
    args.append("--vary-seed")
    for emu in emus:
        args += ["-s", emu.url]
        # Each server's first job holds at its first step until watch is listening,
        # so watch sees every job's progress however long submitting took.
        emu.faults.stall_at_percent = 0
    subprocess.run(args, env=env, check=True, capture_output=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    watch = subprocess.Popen(
        [sys.executable, "-m", "comfyctl", "watch", "--json", "--poll-interval", "2"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(WATCH_ATTACH)
    for emu in emus:
        emu.faults.stall_at_percent = None
    stdout, _ = watch.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if watch.returncode != 0:
        raise SystemExit(f"watch exited {watch.returncode}")
    return wall, cpu, [json.loads(line) for line in stdout.splitlines()]


def bench_watch(jobs: int, servers: int, steps: int, runs: int) -> None:
    print("watch", flush=True)
    emus = [Emulator().start() for _ in range(servers)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # The same run several times, each on a ledger of its own: this kind of
            # machine's speed drifts within minutes, one run can be off by a fifth.
            measured = []
            for run in range(runs):
                folder = Path(tmp) / f"run{run}"
                folder.mkdir()
                env, wf = slow_job(str(folder), steps, 0.01)
                measured.append((*watch_once(emus, env, wf, jobs), env))
            per_thousand = []
            for _, cpu, events, _ in measured:
                progress = sum(1 for e in events if e["event"] == "progress")
                per_thousand.append(cpu / max(progress, 1) * 1000)
            wall, cpu, events, env = sorted(measured, key=lambda m: m[1])[len(measured) // 2]
            progress = sum(1 for e in events if e["event"] == "progress")
            done = sum(1 for e in events if e.get("status") == "success")
            expected = jobs * steps
            report(
                f"watch {jobs} jobs on {servers} servers: wall",
                f"{wall:.1f} s",
                f"{done}/{jobs} succeeded; the first {WATCH_ATTACH:g} s held",
            )
            report(
                "watch: progress events emitted",
                str(progress),
                f"{expected} progress steps sent; node changes are events too",
            )
            report(
                "watch: CPU seconds per 1,000 progress events",
                f"{statistics.median(per_thousand):.2f} s",
                f"median of {runs} runs ({min(per_thousand):.2f}-{max(per_thousand):.2f}); "
                f"total CPU {cpu:.1f} s",
            )
            # What of that any watch costs: start-up (imports) and exit, with one job that
            # is already finished (printed from the ledger, nothing followed).
            floor = []
            finished = events[-1]["prompt_id"]
            for _ in range(5):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run(
                    [sys.executable, "-m", "comfyctl", "watch", "--json", finished],
                    env=env,
                    check=True,
                    capture_output=True,
                )
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                floor.append(
                    (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                )
            report(
                "watch: start-up and exit alone (one finished job)",
                f"{statistics.median(floor):.2f} s",
                f"{statistics.median(floor) / max(progress, 1) * 1000:.2f} s of the figure above",
            )
    finally:
        for emu in emus:
            emu.stop()


def bench_fanout(jobs: int, servers: int, timeout: float) -> None:
    import requests

    from comfyctl.context import AppContext
    from comfyctl.stuck import DetectOptions, detect

    print("fan-out", flush=True)
    emus = [Emulator().start() for _ in range(servers)]
    emus[-1].faults.http_hang = True
    calls = []
    original = requests.Session.request
    lock = threading.Lock()

    def counting(self, method, url, *args, **kwargs):
        with lock:
            calls.append((method, url))
        return original(self, method, url, *args, **kwargs)

    requests.Session.request = counting
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = make_ledger(
                Path(tmp) / "ledger.json", jobs, [e.url for e in emus], status="running"
            )
            app = AppContext(
                ledger_path=ledger.path, config_path=Path(tmp) / "none.toml", timeout=timeout
            )
            start = time.perf_counter()
            result = detect(
                app.ledger,
                list(ledger.load().values()),
                app.client_for_record,
                DetectOptions(deadline=timeout + 1.0),
            )
            wall = time.perf_counter() - start
            conditions: dict[str, int] = {}
            for finding in result.findings:
                conditions[finding.condition] = conditions.get(finding.condition, 0) + 1
            report(
                f"detect-stuck {jobs} active jobs on {servers} servers (1 hanging): wall",
                f"{wall:.2f} s",
                f"timeout {timeout:g} s (+1 s deadline margin)",
            )
            report(
                "detect-stuck: HTTP requests made",
                str(len(calls)),
                f"{len(calls) / servers:.1f} per server; findings {conditions}",
            )
    finally:
        requests.Session.request = original
        emus[-1].faults.http_hang = False
        for emu in emus:
            emu.stop()


def bench_hooks_metrics(size: int, runs: int) -> None:
    """What announcing a job's end costs on a big ledger (the claim is one transaction),
    and `comfyctl metrics` over that ledger (it reads every record)."""
    from comfyctl.hooks import claim

    print("hooks and metrics", flush=True)
    emu = Emulator().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = make_ledger(Path(tmp) / "ledger.json", size, [emu.url])
            ids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(0, size, size // 20)]
            times = []
            for pid in ids:
                start = time.perf_counter()
                assert claim(ledger, pid) is not None
                times.append(time.perf_counter() - start)
            report(
                f"hooks: claim one job's announcement, {size:,}-record ledger",
                f"{statistics.median(times) * 1000:.1f} ms",
                "one ledger transaction per ended job, only with hooks",
            )
            env = {
                "COMFYCTL_LEDGER": str(ledger.path),
                "COMFYCTL_CONFIG": empty_config(tmp, "none.toml"),
            }
            wall = median_wall(
                [sys.executable, "-m", "comfyctl", "metrics", "--confirm", "0"], runs, env
            )
            report(
                f"comfyctl metrics, {size:,}-record ledger, 1 server",
                f"{wall:.2f} s",
                "parses every record (counts, run-time summaries)",
            )
    finally:
        emu.stop()


def bench_observers(steps: int) -> None:
    """Two watchers of one job: how far behind the holder the follower prints each
    percentage (it reads the store), and how long a SIGKILLed holder takes to be replaced."""
    import signal

    from comfyctl.lease import leases_for, listen_lease, live_holder
    from comfyctl.records import parse_time

    print("observers", flush=True)
    emu = Emulator().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env, wf = slow_job(tmp, steps, 0.2)
            leases = leases_for(Ledger(Path(tmp) / "ledger.json"))

            def start() -> tuple[str, subprocess.Popen[str], subprocess.Popen[str]]:
                pid = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "comfyctl",
                        "submit",
                        str(wf),
                        "-s",
                        emu.url,
                        "--vary-seed",
                    ],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                watch = [sys.executable, "-m", "comfyctl", "watch", pid, "--json"]
                first = subprocess.Popen(
                    watch, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
                )
                while live_holder(leases, listen_lease(pid)) is None:
                    time.sleep(0.02)
                second = subprocess.Popen(
                    watch, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
                )
                return pid, first, second

            def seen(out: str) -> dict[float, float]:
                times: dict[float, float] = {}
                for line in out.splitlines():
                    event = json.loads(line)
                    moment = parse_time(event["at"])
                    if event["event"] == "progress" and event.get("progress") and moment:
                        times.setdefault(event["progress"]["percent"], moment.timestamp())
                return times

            _, first, second = start()
            heard, followed = seen(first.communicate()[0]), seen(second.communicate()[0])
            lags = [followed[p] - heard[p] for p in followed if p in heard]
            if lags:
                report(
                    "watch beside a watch: the follower's delay per percentage",
                    f"{statistics.median(lags):.2f} s",
                    f"median over {len(lags)}, max {max(lags):.2f} s (the holder "
                    "writes every 1 s, followers read every 0.25 s)",
                )
            pid, first, second = start()
            time.sleep(1.0)
            os.kill(first.pid, signal.SIGKILL)
            killed = time.perf_counter()
            first.wait()  # reaped, as its shell would (a zombie still looks alive)
            while (live_holder(leases, listen_lease(pid)) or "").split(":")[1:2] != [
                str(second.pid)
            ] and time.perf_counter() - killed < 30:
                time.sleep(0.01)
            handover = time.perf_counter() - killed
            first.communicate()
            out = second.communicate()[0]
            last = json.loads(out.splitlines()[-1])["status"] if out else "?"
            report(
                "SIGKILL of the listening watch: lease taken over after",
                f"{handover:.2f} s",
                f"same host (dead pid seen); the follower ended {last}",
            )
    finally:
        emu.stop()


def _stores(quick: bool, runs: int) -> None:
    bench_ledger([100_000], runs)
    bench_store_submit(100, 100_000)
    bench_postgres(100, 100_000, runs)


def _submit(quick: bool, runs: int) -> None:
    bench_submit(20 if quick else 50)
    bench_store_submit(50 if quick else 100, 100_000)


# Each group of figures, called with (quick, runs).
GROUPS: dict[str, Any] = {
    "startup": lambda quick, runs: bench_startup(runs),
    "ledger": lambda quick, runs: bench_ledger(
        [1000, 10000] if quick else [1000, 10000, 100000], 3
    ),
    "submit": _submit,
    "stores": _stores,
    "postgres": lambda quick, runs: bench_postgres(50 if quick else 100, 100_000, runs),
    "watch": lambda quick, runs: bench_watch(40 if quick else 200, 4, 20, 1 if quick else 3),
    "fanout": lambda quick, runs: bench_fanout(1000, 10, 2.0),
    "hooks": lambda quick, runs: bench_hooks_metrics(10000 if quick else 100000, runs),
    "observers": lambda quick, runs: bench_observers(30),
}


def main() -> None:
    import logging

    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # emulators stopped mid-request
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller ledgers")
    parser.add_argument(
        "--write-readme",
        action="store_true",
        help="put the figures in README.md's Performance section",
    )
    parser.add_argument(
        "--stores",
        action="store_true",
        help="only the ledger-store figures (JSON and PostgreSQL at 100,000)",
    )
    parser.add_argument("--only", choices=sorted(GROUPS), help="run one group of figures")
    args = parser.parse_args()
    compileall.compile_dir(ROOT / "comfyctl", quiet=1)
    runs = 3 if args.quick else 5
    if args.stores or args.only:
        GROUPS[args.only or "stores"](args.quick, runs)
        return
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
    print(f"machine: {machine}")
    for name in (
        "startup",
        "ledger",
        "submit",
        "postgres",
        "watch",
        "fanout",
        "hooks",
        "observers",
    ):
        GROUPS[name](args.quick, runs)
    if args.write_readme:
        write_readme(machine, "python benchmarks/run.py" + (" --quick" if args.quick else ""))


def write_readme(machine: str, command: str) -> None:
    """Replace the figures between the README's bench markers with this run's."""
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    table = "\n".join(f"| {name} | {value} | {note} |" for name, value, note in rows)
    block = (
        f"{start}\nMeasured by `{command}` on {machine}, "
        f"{time.strftime('%Y-%m-%d')} (medians over repeated runs):\n\n"
        f"| measure | value | comparison / note |\n|---|---|---|\n{table}\n{end}"
    )
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    readme.write_text(before + block + after, encoding="utf-8")
    print(f"wrote the figures to {readme}")


if __name__ == "__main__":
    main()
