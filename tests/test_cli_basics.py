"""The command line itself: help, version, cheap imports, and submit's input checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

import comfyctl
from comfyctl.cli import cli
from comfyctl.docgen import subcommands

SRC = Path(comfyctl.__file__).resolve().parents[1]
HEAVY = (
    "requests",
    "websocket",
    "tabulate",
    "aiohttp",
    "urllib3",
    "ssl",
)  # ssl: comfyctl.ws and client


def all_commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []

    def walk(prefix: str, group: click.Group) -> None:
        for name, command in sorted(subcommands(group).items()):
            found.append((f"{prefix}{name}".strip(), command))
            if isinstance(command, click.Group):
                walk(f"{prefix}{name} ", command)

    walk("", cli)
    return found


def test_help(invoke) -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name, _ in all_commands():
        assert name.split()[0] in result.stdout
    assert "Exit codes" in result.stdout
    assert invoke("-h").stdout == result.stdout


def test_module_help_subprocess(run_comfyctl) -> None:
    proc = run_comfyctl("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: comfyctl")
    assert "submit" in proc.stdout and "history" in proc.stdout
    assert proc.stderr == ""


def test_version(invoke) -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"comfyctl, version {comfyctl.__version__}"


@pytest.mark.parametrize("name", [name for name, _ in all_commands()])
def test_every_command_and_option_has_help(invoke, name: str) -> None:
    command = dict(all_commands())[name]
    assert (command.help or "").strip(), f"{name} has no help text"
    assert command.get_short_help_str().strip()
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"{name} {param.opts} has no help"
    result = invoke(*name.split(), "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: cli {name}") or result.stdout.startswith(
        f"Usage: comfyctl {name}"
    )


IMPORTS_AFTER_HELP = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from comfyctl.cli import main
heavy_after = {}
for args in json.loads(sys.argv[2]):
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), (args, exc.code)
    heavy_after[" ".join(args)] = sorted(m for m in sys.modules
                                          if m.split(".")[0] in json.loads(sys.argv[3]))
heavy_after["comfyctl.cli imported"] = ["yes"] if "comfyctl.cli" in sys.modules else []
print(json.dumps(heavy_after))
"""


def test_help_imports_no_heavy_modules() -> None:
    """--help, --version and every command's --help, in one interpreter, one after another:
    the first one that pulls in a heavy module is the one named in the failure."""
    runs = [["--help"], ["--version"]] + [[name, "--help"] for name, _ in all_commands()]
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTS_AFTER_HELP, str(SRC), json.dumps(runs), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    heavy_after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heavy_after.pop("comfyctl.cli imported") == ["yes"]
    assert len(heavy_after) == len(runs)
    assert {args: mods for args, mods in heavy_after.items() if mods} == {}


# -- submit's input errors -----------------------------------------------------------------

WORKFLOW = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "t"}},
}
UI_EXPORT = {
    "last_node_id": 9,
    "last_link_id": 9,
    "version": 0.4,
    "nodes": [{"id": 3, "type": "KSampler", "inputs": [], "widgets_values": [1, "fixed"]}],
    "links": [[1, 4, 0, 3, 0, "MODEL"]],
}


@pytest.fixture
def server_config(config_path: Path) -> Path:
    # Nothing listens on port 9 (discard): were submit to send anything, it would exit 3.
    config_path.write_text(
        'default_server = "gpu1"\n[servers.gpu1]\nurl = "http://127.0.0.1:9"\nconnect_timeout = 2\n'
    )
    return config_path


def write(tmp_path: Path, content: bytes | str) -> Path:
    path = tmp_path / "wf.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def assert_rejected_input(result, tmp_path: Path, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ledger.json").exists()
    assert not (tmp_path / "workflows").exists()


def test_submit_missing_file(invoke, server_config: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-workflow.json"
    assert_rejected_input(invoke("submit", str(missing)), tmp_path, "no-such-workflow.json")


@pytest.mark.parametrize(
    "content, fragments",
    [
        ('{"3": {"class_type": "KSampler",', ("wf.json", "not valid JSON", "line 1")),
        ("", ("wf.json", "not valid JSON")),
        (b"\xff\xfe{\x00}\x00", ("wf.json", "UTF-8")),
        (b'{"3": {"class_type": "caf\xe9", "inputs": {}}}', ("UTF-8",)),
        ("{}", ("wf.json", "no nodes", "API format")),
        ("[]", ("no nodes",)),
        ('"just a string"', ("no nodes",)),
        (json.dumps({**UI_EXPORT, "nodes": {}}), ("UI-format", "not lists")),
        ('{"3": {"inputs": {}}}', ("node '3'", "class_type")),
        ('{"3": {"class_type": "X", "inputs": []}}', ("node '3'",)),
    ],
    ids=[
        "invalid-json",
        "empty-file",
        "utf16",
        "latin1",
        "empty-graph",
        "list",
        "string",
        "ui-format",
        "no-class-type",
        "inputs-not-object",
    ],
)
def test_submit_bad_workflow_file(
    invoke, server_config: Path, tmp_path: Path, content: str | bytes, fragments: tuple[str, ...]
) -> None:
    path = write(tmp_path, content)
    assert_rejected_input(invoke("submit", str(path)), tmp_path, *fragments)


def test_submit_bad_workflow_on_stdin(invoke, server_config: Path, tmp_path: Path) -> None:
    assert_rejected_input(invoke("submit", "-", input="{}"), tmp_path, "stdin", "no nodes")


@pytest.mark.parametrize(
    "assignment, fragments",
    [
        ("99.seed=5", ("99.seed=5", "no node '99'", "Nodes: 3, 4, 9")),
        ("3seed=5", ("NODE.INPUT=VALUE",)),
        ("3.seed", ("NODE.INPUT=VALUE",)),
        ("3.seed=@", ("3.seed=@", "no file after '@'")),
        ("3.seed=@no-such-file.png", ("3.seed=@no-such-file.png", "cannot read", "@@")),
    ],
)
def test_submit_bad_set(
    invoke, server_config: Path, tmp_path: Path, assignment: str, fragments: tuple[str, ...]
) -> None:
    path = write(tmp_path, json.dumps(WORKFLOW))
    result = invoke("submit", str(path), "--set", "3.steps=4", "--set", assignment)
    assert_rejected_input(result, tmp_path, *fragments)


def test_submit_valid_input_gets_past_the_checks(
    invoke, server_config: Path, tmp_path: Path
) -> None:
    """The control for the tests above: a good file with good --set reaches the network."""
    path = write(tmp_path, json.dumps(WORKFLOW))
    result = invoke("submit", str(path), "--set", "3.seed=42", "--set", '9.filename_prefix="x"')
    assert result.exit_code == 3, result.output
    assert "gpu1" in result.stderr and "unreachable" in result.stderr
    assert result.stdout == ""
    # The write-ahead record of a submit that certainly never arrived is removed again.
    doc = json.loads((tmp_path / "ledger.json").read_text())
    assert doc["tasks"] == {}
