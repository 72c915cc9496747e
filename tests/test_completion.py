"""Shell completion: the committed scripts, Click's protocol, ledger ids and server names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.shell_completion import ShellComplete

from comfyctl.cli import cli
from comfyctl.commands.completion import COMPLETE_VAR, PROG_NAME
from comfyctl.docgen import COMPLETION_FILES
from comfyctl.ledger import Ledger

REPO = Path(__file__).resolve().parents[1]
HEAVY = (
    "requests",
    "websocket",
    "tabulate",
    "urllib3",
    "aiohttp",
    "ssl",
)  # ssl: comfyctl.ws and client
ID_COMMANDS = ["watch", "history", "cancel", "detect-stuck", "recover"]


def put(ledger_path: Path, *jobs: tuple[str, str, str]) -> None:
    """Write minimal records (prompt_id, server, submitted_at) straight into a ledger."""
    with Ledger(ledger_path).transaction() as tasks:
        for prompt_id, server, submitted_at in jobs:
            tasks.put(
                {
                    "prompt_id": prompt_id,
                    "server": server,
                    "server_url": f"http://{server}.invalid:8188",
                    "status": "pending",
                    "submitted_at": submitted_at,
                }
            )


@pytest.fixture
def three_jobs(ledger_path: Path) -> list[str]:
    """Three jobs written out of order; returns their ids newest first."""
    put(
        ledger_path,
        ("5a1d0c2e-old", "gpu1", "2026-11-01T08:00:00.000+00:00"),
        ("9f3e7b10-new", "gpu2", "2026-11-29T08:00:00.000+00:00"),
        ("5b6e8d44-mid", "gpu1", "2026-11-15T08:00:00.000+00:00"),
    )
    return ["9f3e7b10-new", "5b6e8d44-mid", "5a1d0c2e-old"]


def complete(line: str, incomplete: str = "") -> list[tuple[str, str | None]]:
    """What Click offers after ``comfyctl <line>`` (in-process, no group callback run)."""
    comp = ShellComplete(cli, {}, PROG_NAME, COMPLETE_VAR)
    return [(item.value, item.help) for item in comp.get_completions(line.split(), incomplete)]


# -- the scripts ---------------------------------------------------------------------------


@pytest.mark.parametrize("shell", sorted(COMPLETION_FILES))
def test_completion_command_prints_the_committed_script(invoke, shell: str) -> None:
    result = invoke("completion", shell)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (REPO / COMPLETION_FILES[shell]).read_text(encoding="utf-8")
    assert COMPLETE_VAR in result.stdout


def test_scripts_register_for_comfyctl() -> None:
    bash = (REPO / COMPLETION_FILES["bash"]).read_text()
    zsh = (REPO / COMPLETION_FILES["zsh"]).read_text()
    fish = (REPO / COMPLETION_FILES["fish"]).read_text()
    assert "complete -o nosort -F _comfyctl_completion comfyctl" in bash
    assert zsh.startswith("#compdef comfyctl\n")  # autoloadable from fpath
    assert "complete --no-files --command comfyctl" in fish


def test_unknown_shell_is_a_usage_error(invoke) -> None:
    assert invoke("completion", "tcsh").exit_code == 2


# -- dynamic values ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ID_COMMANDS)
def test_prompt_ids_newest_first(command: str, three_jobs: list[str]) -> None:
    offered = complete(command)
    assert [value for value, _ in offered] == three_jobs
    assert offered[0][1] == "gpu2 pending"


def test_prompt_ids_filtered_by_prefix_and_after_other_ids(three_jobs: list[str]) -> None:
    assert [v for v, _ in complete("watch", "5")] == ["5b6e8d44-mid", "5a1d0c2e-old"]
    assert [v for v, _ in complete("cancel 9f3e7b10-new", "5a")] == ["5a1d0c2e-old"]
    assert complete("history", "zz") == []


def test_ledger_given_on_the_line_wins(three_jobs: list[str], tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    put(other, ("c0ffee00-other", "gpu3", "2026-11-02T00:00:00.000+00:00"))
    assert [v for v, _ in complete(f"--ledger {other} watch")] == ["c0ffee00-other"]


def test_server_names_from_the_config(config_path: Path, tmp_path: Path) -> None:
    config_path.write_text(
        '[servers.gpu2]\nurl = "http://10.0.0.12:8188"\n'
        '[servers.gpu1]\nurl = "http://10.0.0.11:8188"\n'
    )
    assert complete("submit wf.json --server") == [
        ("gpu1", "http://10.0.0.11:8188"),
        ("gpu2", "http://10.0.0.12:8188"),
    ]
    assert [v for v, _ in complete("history -s", "gpu2")] == ["gpu2"]
    team = tmp_path / "team.toml"
    team.write_text('[servers.render]\nurl = "http://10.0.0.20:8188"\n')
    assert [v for v, _ in complete(f"--config {team} detect-stuck --server")] == ["render"]


def test_broken_ledger_or_config_offers_nothing(ledger_path: Path, config_path: Path) -> None:
    ledger_path.write_text("{not json")
    config_path.write_text("[servers.x\n")
    assert complete("watch") == []
    assert complete("submit wf.json --server") == []


# -- through the real protocol, in a fresh process -----------------------------------------

PROBE = r"""
import sys
sys.path.insert(0, sys.argv[1])
from comfyctl.cli import main
try:
    main([])
finally:
    with open(sys.argv[2], "w") as out:
        out.write("\n".join(sorted(sys.modules)))
"""


def test_completion_protocol_offers_ids_without_heavy_imports(
    three_jobs: list[str], tmp_path: Path
) -> None:
    modules_file = tmp_path / "modules.txt"
    env = {
        **os.environ,
        "_COMFYCTL_COMPLETE": "bash_complete",
        "COMP_WORDS": "comfyctl watch ",
        "COMP_CWORD": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO), str(modules_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"plain,{pid}" for pid in three_jobs]
    modules = set(modules_file.read_text().split())
    assert "comfyctl.options" in modules  # the probe really completed
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"completion imported {heavy}"
    assert "comfyctl.docgen" not in modules


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_sourced_bash_script_completes_ledger_ids(three_jobs: list[str], tmp_path: Path) -> None:
    """What a user gets: source completions/comfyctl.bash, type 'comfyctl watch <TAB>'."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "comfyctl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m comfyctl "$@"\n')
    shim.chmod(0o755)
    script = (
        f'source "{REPO / COMPLETION_FILES["bash"]}"\n'
        'COMP_WORDS=(comfyctl watch ""); COMP_CWORD=2\n'
        "_comfyctl_completion comfyctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == three_jobs
