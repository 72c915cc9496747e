"""comfyctl metrics (issue 16): Prometheus text that agrees with history and detect-stuck."""

from __future__ import annotations

import json
import os
import stat
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from workflows import slow_graph

from comfyctl.metrics import Family, exposition


def submit(
    invoke, tmp_path: Path, server: str, graph: dict, count: int = 1, wait: bool = False
) -> list[str]:
    wf = tmp_path / f"wf{len(list(tmp_path.glob('wf*.json')))}.json"
    wf.write_text(json.dumps(graph))
    result = invoke(
        "submit",
        str(wf),
        "-s",
        server,
        "--count",
        str(count),
        "--vary-seed",
        *(["--wait", "--poll-interval", "0.3"] if wait else []),
    )
    assert result.exit_code in (0, 1), result.stderr
    return [line.split("\t")[0] for line in result.stdout.splitlines()][:count]


def parse(text: str) -> dict[str, list]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(families: dict, name: str) -> dict[tuple, float]:
    family_name = name.removesuffix("_count").removesuffix("_sum")
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in families[family_name].samples
        if s.name == name
    }


def test_metrics_parse_and_agree_with_history_and_detect_stuck(
    invoke, run_comfyctl, emulator_factory, tmp_path, config_path
):
    a, b, c, d = (
        emulator_factory(),
        emulator_factory(jobs_api=True),
        emulator_factory(),
        emulator_factory(),
    )
    config_path.write_text(
        "".join(
            f'[servers.{name}]\nurl = "{emu.url}"\n'
            for name, emu in zip("abcd", (a, b, c, d), strict=True)
        )
    )
    quick = slow_graph(steps=3, seconds=0.05)
    submit(invoke, tmp_path, "a", quick, count=2, wait=True)
    submit(invoke, tmp_path, "a", slow_graph(steps=3, seconds=0.02, fail_at=2), wait=True)
    submit(invoke, tmp_path, "b", quick, count=2, wait=True)
    submit(invoke, tmp_path, "a", quick, count=2)  # finished while nobody listened
    submit(invoke, tmp_path, "b", slow_graph(steps=400, seconds=0.05), count=2)  # run, pend
    submit(invoke, tmp_path, "c", slow_graph(steps=400, seconds=0.05))
    a.wait_idle(timeout=20)
    c.restart()  # its job is lost
    submit(invoke, tmp_path, "d", slow_graph(steps=400, seconds=0.05))
    time.sleep(0.5)
    d.stop()  # its job is on an unreachable server

    detected = invoke("detect-stuck", "--nl", "--confirm", "0", "--server-timeout", "3")
    result = run_comfyctl("metrics", "--confirm", "0", "--server-timeout", "3")
    listed = json.loads(invoke("history", "--json", "--limit", "1000").stdout)["tasks"]
    assert result.returncode == 0, result.stderr
    families = parse(result.stdout)

    by_status = Counter((r["server"], r["status"]) for r in listed)
    jobs = samples(families, "comfyctl_jobs")
    assert {k: v for k, v in jobs.items() if v} == {
        (("server", s), ("status", st)): n for (s, st), n in by_status.items()
    }
    assert len(jobs) == 4 * 9  # every status of every server, zeros included

    found = Counter(
        (f["server"], f["condition"]) for f in map(json.loads, detected.stdout.splitlines())
    )
    assert found == {("a", "finished-unnoticed"): 2, ("c", "lost"): 1, ("d", "unreachable"): 1}
    stuck = samples(families, "comfyctl_stuck_jobs")
    assert {k: v for k, v in stuck.items() if v} == {
        (("condition", cond), ("server", s)): n for (s, cond), n in found.items()
    }

    assert samples(families, "comfyctl_server_up") == {
        (("server", "a"),): 1,
        (("server", "b"),): 1,
        (("server", "c"),): 1,
        (("server", "d"),): 0,
    }
    queue = samples(families, "comfyctl_server_queue_jobs")
    assert queue[(("server", "b"), ("state", "running"))] == 1
    assert queue[(("server", "b"), ("state", "pending"))] == 1
    oldest = samples(families, "comfyctl_oldest_job_age_seconds")
    assert oldest[(("server", "b"), ("status", "running"))] > 0
    assert oldest[(("server", "b"), ("status", "pending"))] > 0
    timed = Counter(
        r["server"] for r in listed if (r.get("server_timing") or {}).get("finished_at")
    )
    # The watched successes (read from the servers' history, with their own clocks).
    assert timed["a"] >= 2 and timed["b"] == 2
    runs = samples(families, "comfyctl_job_run_seconds_count")
    assert runs == {(("server", s),): timed[s] for s in "abcd"}
    run_sum = samples(families, "comfyctl_job_run_seconds_sum")
    assert 0 < run_sum[(("server", "b"),)] < 60
    assert families["comfyctl_job_run_seconds"].type == "summary"
    for name in families:
        assert name.startswith("comfyctl_")
        assert (families[name].type == "counter") == name.endswith("_total")


def test_textfile_is_written_atomically_and_readable(invoke, emulator, tmp_path):
    submit(invoke, tmp_path, emulator.url, slow_graph(steps=2, seconds=0.01), wait=True)
    target = tmp_path / "textfile" / "comfyctl.prom"
    target.parent.mkdir()
    target.write_text("old\n")
    result = invoke("metrics", "--textfile", str(target), "--confirm", "0")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    families = parse(target.read_text())
    assert (
        samples(families, "comfyctl_jobs")[
            (("server", emulator.url.split("://")[1]), ("status", "success"))
        ]
        == 1
    )
    assert os.listdir(target.parent) == ["comfyctl.prom"]  # no temp file left behind
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_hanging_server_costs_its_timeout_and_shows_as_down(invoke, emulator_factory, tmp_path):
    good, bad = emulator_factory(), emulator_factory()
    submit(invoke, tmp_path, good.url, slow_graph(steps=2, seconds=0.01), wait=True)
    submit(invoke, tmp_path, bad.url, slow_graph(steps=2, seconds=0.01), wait=True)
    bad.faults.http_hang = True
    result = invoke("metrics", "--server-timeout", "1", "--confirm", "0")
    assert result.exit_code == 0, result.stderr
    up = samples(parse(result.stdout), "comfyctl_server_up")
    assert up == {
        (("server", good.url.split("://")[1]),): 1,
        (("server", bad.url.split("://")[1]),): 0,
    }


@pytest.mark.parametrize("label", ['a"b', "back\\slash", "new\nline"])
def test_label_values_are_escaped(label):
    family = Family("comfyctl_x", "gauge", "help with \\ and\nnewline")
    family.add({"server": label}, 1.5)
    (parsed,) = text_string_to_metric_families(exposition([family]))
    assert parsed.samples[0].labels == {"server": label}
    assert parsed.documentation == "help with \\ and\nnewline"
