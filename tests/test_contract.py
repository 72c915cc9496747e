"""The output contract (issue 13), over every command: README's "Output contract" table,
each command's options, and what each one prints with --json and --nl.

--json is one JSON document with schema and schema_version (a listing's items under one
list) for every command that is not a stream; --nl one object per line for every command
that lists things; streams (watch, submit --wait) one object per line with either. Every
object printed validates against the JSON Schema shipped in comfyctl/schemas/.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
from workflows import slow_graph

from comfyctl.commands import COMMANDS

REPO = Path(__file__).resolve().parent.parent

#: command -> (kind, schema --json prints, schema of each --nl line or None).
#: kind: "document" (--json: one document), "stream" (one object per line), "none" (no data).
CONTRACT: dict[str, tuple[str, str | None, str | None]] = {
    "cancel": ("document", "comfyctl.cancel-list", "comfyctl.cancel"),
    "completion": ("none", None, None),
    "convert": ("none", None, None),
    "debug-tasks": ("document", "comfyctl.fleet-report", None),
    "demo": ("document", "comfyctl.task-list", "comfyctl.task"),
    "detect-stuck": ("document", "comfyctl.finding-list", "comfyctl.finding"),
    "history": ("document", "comfyctl.task-list", "comfyctl.task"),
    "metrics": ("document", "comfyctl.metrics", None),
    "recover": ("document", "comfyctl.recovery-action-list", "comfyctl.recovery-action"),
    "servers": ("document", "comfyctl.servers", "comfyctl.server"),
    "submit": ("document", "comfyctl.submitted-list", "comfyctl.submitted"),
    "submit --wait": ("stream", "comfyctl.watch-event", "comfyctl.watch-event"),
    "validate": ("document", "comfyctl.validation", None),
    "watch": ("stream", "comfyctl.watch-event", "comfyctl.watch-event"),
}
#: Why a command prints no JSON at all.
NO_DATA = {
    "completion": "prints a shell script",
    "convert": "prints the API workflow itself, in ComfyUI's own format",
}


def schema_for(name: str) -> dict[str, Any]:
    """The shipped JSON Schema that covers ``name`` (an item and its -list document share
    one file; comfyctl.server is in servers')."""
    stem = name.removeprefix("comfyctl.").removesuffix("-list")
    stem = {"server": "servers"}.get(stem, stem)
    text = resources.files("comfyctl").joinpath(f"schemas/{stem}.schema.json").read_text()
    return json.loads(text)


def check_document(text: str, expected: str) -> dict[str, Any]:
    """stdout is exactly one JSON document of schema ``expected``, holding a list."""
    doc = json.loads(text)  # the whole of stdout: one document, nothing before or after
    assert isinstance(doc, dict) and doc["schema"] == expected, text[:300]
    assert isinstance(doc["schema_version"], int)
    assert any(isinstance(v, list) for v in doc.values()), f"{expected} holds no list"
    jsonschema.validate(doc, schema_for(expected))
    return doc


def check_lines(text: str, allowed: set[str]) -> list[dict[str, Any]]:
    """stdout is one JSON object per line, each of an allowed schema."""
    objects = []
    for line in text.splitlines():
        obj = json.loads(line)
        assert obj["schema"] in allowed, line
        assert isinstance(obj["schema_version"], int)
        jsonschema.validate(obj, schema_for(obj["schema"]))
        objects.append(obj)
    return objects


def readme_contract() -> dict[str, tuple[str, str | None, str | None]]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Output contract") :]
    section = section[: section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`comfyctl "):
            continue

        def name(cell: str) -> str | None:
            found = re.search(r"`(comfyctl\.[a-z-]+)`", cell)
            return found.group(1) if found else None

        rows[cells[0].strip("`").removeprefix("comfyctl ")] = (
            cells[1],
            name(cells[2]),
            name(cells[3]),
        )
    return rows


def test_every_command_is_in_the_contract_and_readme_says_the_same():
    assert {c for c in CONTRACT if " " not in c} == set(COMMANDS), (
        "a command was added or removed: give it a row in CONTRACT and README's table"
    )
    assert readme_contract() == CONTRACT


def command(name: str) -> click.Command:
    from comfyctl.cli import cli

    found = cli.get_command(click.Context(cli), name.split()[0])
    assert found is not None
    return found


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_output_options_follow_the_contract(name):
    kind, _, nl = CONTRACT[name]
    flags = {opt for p in command(name).params for opt in p.opts}
    if kind == "none":
        assert not flags & {"--json", "--nl"}, NO_DATA[name]
        return
    assert "--json" in flags
    assert ("--nl" in flags) == (nl is not None)
    # --timeout always means "give up after this long"; the per-server bound is its own.
    timeout = next((p for p in command(name).params if "--timeout" in p.opts), None)
    if timeout is not None and not getattr(timeout, "hidden", False):
        assert "Give up" in (getattr(timeout, "help", "") or ""), name


@pytest.fixture
def fleet(emulator, config_path, tmp_path):
    """A configured server and a workflow file; jobs are submitted by the test."""
    config_path.write_text(f'[servers.a]\nurl = "{emulator.url}"\n')
    quick = tmp_path / "quick.json"
    quick.write_text(json.dumps(slow_graph(steps=1, seconds=0.01)))
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(slow_graph(steps=200, seconds=0.05)))
    return emulator, str(quick), str(slow)


def sweep(run, fleet, flag: str) -> dict[str, Any]:
    """Every command with ``flag``, in an order that gives each something to print: a job
    finished unnoticed (detect-stuck, recover), slow ones to cancel, one to watch."""
    emulator, quick, slow = fleet
    nl = flag == "--nl"
    out: dict[str, Any] = {}

    def call(name: str, *args: str, codes: tuple[int, ...] = (0,)) -> str:
        result = run(*name.split()[:1], *args, flag)
        code = result.exit_code if hasattr(result, "exit_code") else result.returncode
        assert code in codes, (name, code, result.stderr)
        return result.stdout

    def check(name: str, text: str) -> Any:
        kind, doc, line = CONTRACT[name]
        if kind == "stream" or nl:
            allowed = {line} if name != "submit --wait" else {"comfyctl.submitted", line}
            out[name] = check_lines(text, {s for s in allowed if s})
        else:
            out[name] = check_document(text, doc)
        return out[name]

    def ids(name: str) -> list[str]:
        got = (
            out[name]
            if nl
            else out[name][next(k for k, v in out[name].items() if isinstance(v, list))]
        )
        return [i["prompt_id"] for i in got]

    check("submit", call("submit", quick, "-s", "a"))
    unnoticed = ids("submit")
    emulator.wait_idle(timeout=10)
    check("submit", call("submit", slow, "-s", "a", "--count", "2"))
    check("cancel", call("cancel", *ids("submit")))
    assert {r["prompt_id"] for r in (out["cancel"] if nl else out["cancel"]["results"])} == set(
        ids("submit")
    )
    check("detect-stuck", call("detect-stuck", "--listen", "0", codes=(6,)))
    assert [
        f["prompt_id"] for f in (out["detect-stuck"] if nl else out["detect-stuck"]["findings"])
    ] == unnoticed
    check("recover", call("recover", "--dry-run", "--listen", "0", codes=(1,)))
    check("watch", call("watch", *unnoticed))
    assert {e["status"] for e in out["watch"]} == {"success"}
    check("submit --wait", call("submit", quick, "-s", "a", "--wait", "--poll-interval", "0.2"))
    check("history", call("history"))
    assert len(out["history"] if nl else out["history"]["tasks"]) == 4
    check("servers", call("servers"))
    if not nl:
        check("debug-tasks", call("debug-tasks"))
        check("metrics", call("metrics", "--listen", "0", "--confirm", "0"))
        check("validate", call("validate", quick, "-s", "a"))
        one = json.loads(call("history", unnoticed[0]))  # one job: that job's document
        assert one["schema"] == "comfyctl.task" and one["prompt_id"] == unnoticed[0]
        jsonschema.validate(one, schema_for("comfyctl.task"))
    check("demo", call("demo", "--jobs", "1", "--steps", "1"))
    return out


def test_json_is_one_document_for_every_command_as_a_real_process(fleet, run_comfyctl):
    out = sweep(run_comfyctl, fleet, "--json")
    covered = {n for n, (kind, _, _) in CONTRACT.items() if kind != "none"}
    assert set(out) == covered


def test_nl_is_one_object_per_line_for_every_listing_command(fleet, invoke):
    out = sweep(invoke, fleet, "--nl")
    assert set(out) == {n for n, (_, _, nl) in CONTRACT.items() if nl}


def test_server_timeout_and_the_deprecated_timeout(fleet, invoke):
    for name in ("detect-stuck", "debug-tasks"):
        assert "--timeout" not in command(name).get_help(click.Context(command(name)))
        old = invoke(name, "--timeout", "2", "--json")
        assert old.exit_code == 0, old.stderr
        assert "--timeout is deprecated" in old.stderr and "--server-timeout" in old.stderr
        json.loads(old.stdout)  # still one document: the note is on stderr
        new = invoke(name, "--server-timeout", "2", "--json")
        assert new.exit_code == 0 and "deprecated" not in new.stderr
        both = invoke(name, "--timeout", "2", "--server-timeout", "2")
        assert both.exit_code == 2 and "cannot be combined" in both.stderr
