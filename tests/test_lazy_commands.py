"""Commands are imported only when needed: ``--help`` and completing a command name import
none of them, and show exactly what the commands themselves would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

import comfyctl
from comfyctl.cli import cli
from comfyctl.commands import COMMANDS

SRC = Path(comfyctl.__file__).resolve().parents[1]

# Runs in a fresh interpreter (nothing imported yet): each step reports which command modules
# it pulled in and what it printed; then every command is imported and the same is asked again.
PROBE = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from click.shell_completion import ShellComplete
from click.testing import CliRunner
import comfyctl.commands
from comfyctl.cli import cli

if sys.argv[2] == "no-index":
    comfyctl.commands.INDEX = comfyctl.commands.INDEX.with_name("missing.json")

def loaded():
    return sorted(m for m in sys.modules if m.startswith("comfyctl.commands."))

def complete(words):
    items = ShellComplete(cli, {}, "comfyctl", "_COMFYCTL_COMPLETE").get_completions(words, "")
    return [[item.value, item.help] for item in items]

runner = CliRunner()
out = {}
out["help"] = runner.invoke(cli, ["--help"], terminal_width=100).output
out["after help"] = loaded()
out["complete"] = complete([])
out["after complete"] = loaded()
out["typo"] = runner.invoke(cli, ["histroy"]).output
out["after typo"] = loaded()
out["watch help"] = runner.invoke(cli, ["watch", "--help"]).exit_code
out["after watch help"] = loaded()
from comfyctl.docgen import subcommands
subcommands(cli)
out["help, all imported"] = runner.invoke(cli, ["--help"], terminal_width=100).output
out["complete, all imported"] = complete([])
print(json.dumps(out))
"""


def probe(mode: str = "index") -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(SRC), mode], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_help_and_completion_import_no_command_and_show_what_the_commands_say() -> None:
    out = probe()
    assert out["after help"] == []
    assert out["after complete"] == []
    assert out["help"] == out["help, all imported"]
    assert out["complete"] == out["complete, all imported"]
    names = [value for value, _ in out["complete"]]
    assert names == sorted(COMMANDS)
    # A mistyped command is still matched against every command, imported or not.
    assert "No such command 'histroy'. Did you mean 'history'?" in out["typo"]
    assert out["after typo"] == []
    # Running a command imports its module (and whatever it needs), not the others.
    assert out["watch help"] == 0
    assert "comfyctl.commands.watch" in out["after watch help"]
    assert "comfyctl.commands.metrics" not in out["after watch help"]


def test_without_the_index_the_commands_are_imported_and_the_list_is_the_same() -> None:
    out = probe("no-index")
    assert out["help"] == out["help, all imported"]
    assert out["complete"] == out["complete, all imported"]
    modules = {spec.partition(":")[0] for spec in COMMANDS.values()}
    assert modules <= set(out["after help"])  # a stale index costs time, never accuracy


def test_every_registered_command_is_a_command_of_that_name() -> None:
    ctx = click.Context(cli, info_name="comfyctl")
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command), name
        assert command.name == name
