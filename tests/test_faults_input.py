"""Hostile input: each gets one clear message and the documented exit code, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults


def _huge(path: Path) -> None:
    with path.open("wb") as handle:
        handle.truncate(65 * 1024 * 1024)


WORKFLOWS = {
    "huge": _huge,
    "deeply-nested": lambda p: p.write_text("[" * 200000 + "]" * 200000),
    "nested-object": lambda p: p.write_text('{"1": ' * 50000 + "1" + "}" * 50000),
    "not-utf8": lambda p: p.write_bytes(b'{"1": "\xff\xfe"}'),
    "not-json": lambda p: p.write_text("class_type: KSampler\n"),
    "binary": lambda p: p.write_bytes(bytes(range(256)) * 10),
    "empty-file": lambda p: p.write_text(""),
    "empty-graph": lambda p: p.write_text("{}"),
    "list": lambda p: p.write_text("[1, 2]"),
    "ui-format": lambda p: p.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4})),
    "node-not-object": lambda p: p.write_text('{"1": 5}'),
    "directory": lambda p: p.mkdir(),
    "missing": lambda p: None,
}


@pytest.mark.parametrize("kind", sorted(WORKFLOWS))
def test_hostile_workflow_files(kind, invoke, tmp_path, ledger_path, fault_counts):
    path = tmp_path / f"wf-{kind}"
    WORKFLOWS[kind](path)
    result = invoke("submit", str(path), "-s", "http://127.0.0.1:9")
    assert result.exit_code == 2, (kind, result.stderr)
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith("Error: ")  # one sentence, last line
    assert "Traceback" not in result.stderr
    assert not ledger_path.exists(), "nothing may be written for bad input"
    fault_counts["hostile inputs: workflows"] = fault_counts.get("hostile inputs: workflows", 0) + 1


@pytest.mark.parametrize("prompt_id", ["not-a-uuid", "../../etc/passwd", "", "\u202e", "a" * 500])
def test_prompt_ids_that_are_not_uuids(prompt_id, invoke, fault_counts):
    for command in ("watch", "history", "cancel", "detect-stuck", "recover"):
        result = invoke(command, prompt_id)
        assert result.exit_code in (2, 4), (command, prompt_id, result.stderr)
        assert "Traceback" not in result.stderr
    fault_counts["hostile inputs: prompt ids"] = (
        fault_counts.get("hostile inputs: prompt ids", 0) + 1
    )


CONFIGS = {
    "ftp-url": '[servers.a]\nurl = "ftp://host:21"\n',
    "no-host": '[servers.a]\nurl = "http://:8188"\n',
    "bad-port": '[servers.a]\nurl = "http://host:99999"\n',
    "no-url": "[servers.a]\ntimeout = 3\n",
    "not-toml": "servers = [\n",
    "not-utf8": b'[servers.a]\nurl = "\xff"\n',
    "unknown-key": '[servers.a]\nurl = "http://h:1"\npasword = "x"\n',
    "missing-env": '[servers.a]\nurl = "http://${COMFYCTL_TEST_UNSET_VAR}:1"\n',
    "bad-timeout": '[servers.a]\nurl = "http://h:1"\ntimeout = "soon"\n',
    "servers-not-table": 'servers = "a"\n',
    "directory": None,
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_hostile_config_files(kind, runner, tmp_path, fault_counts):
    from comfyctl.cli import cli

    path = tmp_path / "bad.toml"
    content = CONFIGS[kind]
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = runner.invoke(cli, ["--config", str(path), "servers"])
    assert result.exit_code == 2, (kind, result.output)
    assert str(path) in result.stderr or "Server 'a'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "${" not in result.stderr or kind == "missing-env"
    fault_counts["hostile inputs: configs"] = fault_counts.get("hostile inputs: configs", 0) + 1


def test_server_option_with_a_bad_url_names_configured_servers(invoke, config_path):
    config_path.write_text('[servers.gpu1]\nurl = "http://10.0.0.1:8188"\n')
    result = invoke("submit", "x.json", "-s", "http://host:notaport")
    assert result.exit_code == 2
    result = invoke("history", "--server", "gpu9")
    assert result.exit_code == 2 and "gpu1" in result.stderr
