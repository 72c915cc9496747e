"""Generated docs stay in sync with the CLI; every command is documented; --traceback works."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from comfyctl import docgen
from comfyctl.cli import cli
from comfyctl.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]
DOCS = docgen.command_docs(cli)
COMMANDS = docgen.subcommands(cli)
REGENERATE = "Run `python -m comfyctl.docgen` and commit the result."


def doc_id(doc: docgen.CommandDoc) -> str:
    return doc.path


# -- the committed files match the CLI -----------------------------------------------------


def test_generated_files_match_the_cli() -> None:
    outdated = docgen.stale(cli, REPO)
    assert outdated == [], (
        f"Out of date with the CLI (click {click.__version__}): {', '.join(outdated)}. {REGENERATE}"
    )


@pytest.fixture
def fresh_checkout(tmp_path: Path) -> Path:
    """A scratch copy of the generated files, freshly written: in sync by construction."""
    shutil.copy(REPO / docgen.README, tmp_path / docgen.README)
    docgen.write(cli, tmp_path)
    assert docgen.stale(cli, tmp_path) == []
    return tmp_path


def test_sync_check_fails_when_a_commands_help_changes(
    fresh_checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = COMMANDS["history"]
    monkeypatch.setattr(history, "help", history.help.replace("newest first", "oldest first"))
    # The summary line also appears in the root page's command list, and in the index that
    # list is shown from without importing the commands.
    assert docgen.stale(cli, fresh_checkout) == [
        "README.md",
        "comfyctl/commands/index.json",
        "man/comfyctl-history.1",
        "man/comfyctl.1",
    ]


def test_sync_check_fails_when_an_option_changes(
    fresh_checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    submit = COMMANDS["submit"]
    (count,) = [p for p in submit.params if p.name == "count"]
    monkeypatch.setattr(count, "help", "Submit this many.")
    monkeypatch.setattr(
        submit,
        "params",
        [*submit.params, click.Option(["--dry-run"], is_flag=True, help="Change nothing.")],
    )
    assert docgen.stale(cli, fresh_checkout) == ["README.md", "man/comfyctl-submit.1"]


def test_sync_check_fails_for_a_removed_command_and_an_edited_file(fresh_checkout: Path) -> None:
    (fresh_checkout / "man" / "comfyctl-gone.1").write_text(".TH GONE 1\n")
    bash = fresh_checkout / "completions" / "comfyctl.bash"
    bash.write_text(bash.read_text() + "# hand edit\n")
    assert docgen.stale(cli, fresh_checkout) == ["completions/comfyctl.bash", "man/comfyctl-gone.1"]


def test_docgen_check_command(
    fresh_checkout: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert docgen.main(["--check", "--root", str(fresh_checkout)]) == 0
    monkeypatch.setattr(COMMANDS["watch"], "help", "Follow jobs.\n\nChanged.")
    assert docgen.main(["--check", "--root", str(fresh_checkout)]) == 1
    err = capsys.readouterr().err
    assert "man/comfyctl-watch.1" in err and "python -m comfyctl.docgen" in err
    assert docgen.main(["--root", str(fresh_checkout)]) == 0  # regenerating fixes it
    assert docgen.main(["--check", "--root", str(fresh_checkout)]) == 0


def test_generation_is_byte_stable() -> None:
    first, second = docgen.generate(cli, REPO), docgen.generate(cli, REPO)
    assert first == second
    for name, text in first.items():
        if name.startswith("man/"):
            assert f'"{docgen.MAN_DATE}"' in text.splitlines()[1], name


def test_a_man_page_for_every_command() -> None:
    pages = {name for name in docgen.generate(cli, REPO) if name.startswith("man/")}
    assert pages == {"man/comfyctl.1"} | {
        f"man/comfyctl-{name}.1" for name in COMMANDS if not COMMANDS[name].hidden
    }


def test_readme_reference_is_between_markers_before_exit_codes() -> None:
    readme = (REPO / docgen.README).read_text(encoding="utf-8")
    start, end = readme.index(docgen.REFERENCE_START), readme.index(docgen.REFERENCE_END)
    assert start < end < readme.index("## Exit codes")
    for doc in DOCS:
        assert f"### {doc.path}\n" in readme[start:end]


# -- every command is documented -----------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_command_has_summary_paragraph_and_examples(doc: docgen.CommandDoc) -> None:
    first = (doc.command.help or "").strip().splitlines()
    assert first and len(doc.summary) <= 80 and doc.summary.endswith("."), (
        f"{doc.path}: the help must start with a one-line summary"
    )
    assert "\n" not in doc.summary and doc.summary == first[0].strip(), (
        f"{doc.path}: the summary must fit on one line"
    )
    assert doc.paragraphs and len(doc.paragraphs[0].split()) >= 8, (
        f"{doc.path}: the summary must be followed by a paragraph of explanation"
    )
    assert doc.examples, f"{doc.path}: the help needs an '\\b Examples:' block"
    for line in doc.examples:
        assert line.startswith(("comfyctl ", "eval ", "*/")) or "| comfyctl" in line, (
            f"{doc.path}: example {line!r} does not run comfyctl"
        )
        assert "comfyctl" in line


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_option_has_help(doc: docgen.CommandDoc) -> None:
    for param in docgen.visible_params(doc):
        if not isinstance(param, click.Option):
            continue
        assert (param.help or "").strip(), f"{doc.path} {'/'.join(param.opts)} has no help"
        if not param.is_flag and not param.count:  # it takes a value: say what kind
            assert param.make_metavar(doc.ctx), f"{doc.path} {param.opts} has no metavar"


def test_examples_use_only_real_commands() -> None:
    names = set(COMMANDS)
    for doc in DOCS:
        for line in doc.examples:
            for used in re.findall(r"comfyctl(?: --?[\w-]+(?: [\w./]+)?)* ([a-z-]+)", line):
                assert used in names, f"{doc.path}: example uses unknown command {used!r}"


# -- what the man pages and README say about the rest of the code --------------------------


def test_exit_status_section_lists_every_exit_code() -> None:
    assert [int(code) for code, _ in docgen.exit_codes(cli)] == sorted(int(c) for c in ExitCode)


def test_readme_exit_code_table_matches_the_code() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Exit codes") : readme.index("## Performance")]
    codes = [int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)]
    assert codes == sorted(int(c) for c in ExitCode)


def test_environment_section_lists_every_variable_the_code_reads() -> None:
    used = set()
    for path in (REPO / "comfyctl").rglob("*.py"):
        if "emulator" not in path.parts and path.name != "docgen.py":
            used |= set(re.findall(r"\bCOMFYCTL_[A-Z_]+", path.read_text(encoding="utf-8")))
    listed = {name for name, _ in docgen.ENVIRONMENT}
    assert used == listed - {"NO_COLOR"}


def test_readme_describes_every_json_schema() -> None:
    names = set()
    for path in (REPO / "comfyctl").rglob("*.py"):
        names |= set(re.findall(r'"schema":\s*"(comfyctl\.[a-z-]+)"', path.read_text()))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## JSON schemas") : readme.index("## Command reference")]
    assert len(names) >= 9
    for name in sorted(names):
        assert f"| `{name}` |" in section, f"README's JSON schemas table lacks {name}"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_man_page_renders_without_warnings(doc: docgen.CommandDoc) -> None:
    page = REPO / "man" / f"{doc.page}.1"
    proc = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def man_db() -> bool:
    """man-db's man (the one with --warnings), as on Debian, Ubuntu and Fedora."""
    if shutil.which("man") is None:
        return False
    proc = subprocess.run(["man", "--version"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and proc.stdout.startswith("man ")


@pytest.mark.skipif(not man_db(), reason="man-db's man is not installed")
def test_man_renders_the_main_page() -> None:
    proc = subprocess.run(
        ["man", "--warnings", "-l", str(REPO / "man" / "comfyctl.1")],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            "PATH": "/usr/bin:/bin",
            "MANPAGER": "cat",
            "PAGER": "cat",
            "MANWIDTH": "80",
            "LANG": "C.UTF-8",
        },
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = proc.stdout
    for heading in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "GLOBAL OPTIONS",
        "EXAMPLES",
        "EXIT STATUS",
        "ENVIRONMENT",
        "SEE ALSO",
    ):
        assert f"\n{heading}\n" in text
    assert "comfyctl - Track ComfyUI jobs across a fleet of servers" in text
    assert "comfyctl-submit(1)" in text and "--traceback" in text


# -- --traceback ---------------------------------------------------------------------------


@pytest.fixture
def corrupt_ledger(ledger_path: Path) -> Path:
    ledger_path.write_text('{"schema": "comfyctl.ledger", "tasks": ')
    return ledger_path


def test_core_error_without_traceback_is_one_message(run_comfyctl, corrupt_ledger: Path) -> None:
    proc = run_comfyctl("history")
    assert proc.returncode == ExitCode.LEDGER
    assert "Traceback" not in proc.stderr
    assert "unreadable" in proc.stderr and str(corrupt_ledger) in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("how", ["option", "env"])
def test_traceback_shows_the_real_exception(run_comfyctl, corrupt_ledger: Path, how: str) -> None:
    if how == "option":
        proc = run_comfyctl("--traceback", "history")
    else:
        proc = run_comfyctl("history", env={"COMFYCTL_TRACEBACK": "1"})
    assert proc.returncode == 7  # the documented exit code, traceback or not
    assert "Traceback (most recent call last)" in proc.stderr
    assert "comfyctl.errors.LedgerCorrupt" in proc.stderr
    assert "ledger.py" in proc.stderr  # raised where it happened, not re-raised by the CLI
