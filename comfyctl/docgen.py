"""Generate completions/, man/, README's command reference and the command index (the
one-line help ``--help`` lists without importing the commands) from the Click command tree.

    python -m comfyctl.docgen            # rewrite the generated files
    python -m comfyctl.docgen --check    # list stale files, exit 1 if any

Everything here is derived from the commands' own help, options and epilog, so the
documentation cannot drift from ``--help``; tests/test_docs.py runs the check. Output is
byte-stable: the man pages carry a fixed date and help is formatted at a fixed width.
Never imported on the CLI's normal paths.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click

from comfyctl import __version__
from comfyctl.commands import INDEX, index_entry
from comfyctl.commands.completion import completion_source

REPO = Path(__file__).resolve().parents[1]
PROG = "comfyctl"
# Fixed, so that regenerating is byte-stable; move it forward when the pages change a lot.
MAN_DATE = "2026-11-30"
HELP_WIDTH = 80
COMPLETION_FILES = {
    "bash": "completions/comfyctl.bash",
    "zsh": "completions/_comfyctl",
    "fish": "completions/comfyctl.fish",
}
README = "README.md"
COMMAND_INDEX = INDEX.relative_to(REPO).as_posix()
REFERENCE_START = "<!-- commands:start -->"
REFERENCE_END = "<!-- commands:end -->"
REGENERATE = "python -m comfyctl.docgen"

ENVIRONMENT = (
    ("COMFYCTL_CONFIG", "Config file, as --config."),
    ("COMFYCTL_LEDGER", "Task ledger, as --ledger: a JSON file path or a postgresql:// URL."),
    (
        "COMFYCTL_SERVER",
        "The server used when a command needs one and none is given. Set for "
        "an --exec command to the job's server name, so comfyctl run from "
        "a hook defaults to it.",
    ),
    ("COMFYCTL_LOCK_TIMEOUT", "Seconds to wait for the ledger lock before exit 7 (default 10)."),
    ("COMFYCTL_TRACEBACK", "Set to 1 to show the full Python traceback on errors."),
    (
        "COMFYCTL_CACHE_DIR",
        "Where each server's /object_info is cached (default: the user "
        "cache dir, e.g. ~/.cache/comfyctl/).",
    ),
    ("NO_COLOR", "When set, no colour in output (as --no-color)."),
    (
        "COMFYCTL_WEBHOOK_SECRET",
        "Signs the bodies POSTed to --webhook URLs "
        "(X-Comfyctl-Signature); else the config's webhook_secret.",
    ),
    ("COMFYCTL_PROMPT_ID", "Set for an --exec command: the job that ended."),
    (
        "COMFYCTL_STATUS",
        "Set for an --exec command: how it ended (success, error, interrupted, cancelled, lost).",
    ),
    ("COMFYCTL_SERVER_URL", "Set for an --exec command: the job's server URL."),
    ("COMFYCTL_OUTPUTS", "Set for an --exec command: the job's output URLs, one per line."),
)
FILES = (
    (
        "config.toml",
        "In the user config dir (e.g. ~/.config/comfyctl/ on Linux): servers, "
        "credentials, timeouts. 'comfyctl servers' prints where.",
    ),
    (
        "ledger.json",
        "In the user data dir (e.g. ~/.local/share/comfyctl/ on Linux): one "
        "record per unfinished job, bound to its server.",
    ),
    (
        "ledger-history/",
        "Beside the ledger: finished jobs, in JSON segments that never change "
        "once written, and the manifest listing them.",
    ),
    (
        "workflows/",
        "Beside the ledger: submitted workflows, content-addressed, so jobs can be resubmitted.",
    ),
    (
        "inputs.json",
        "Beside the ledger: which input file (by SHA-256) was uploaded to which "
        "server under which name, so it is not sent again.",
    ),
)


# -- reading the Click tree ----------------------------------------------------------------


@dataclass
class CommandDoc:
    """One command's help, split into the parts the man page and the checks need."""

    path: str  # "comfyctl" or "comfyctl submit"
    command: click.Command
    ctx: click.Context
    summary: str = ""
    paragraphs: list[str] = field(default_factory=list)
    blocks: dict[str, list[str]] = field(default_factory=dict)  # "Examples" -> lines

    @property
    def page(self) -> str:
        return self.path.replace(" ", "-")

    @property
    def examples(self) -> list[str]:
        return self.blocks.get("Examples", [])


def split_help(text: str) -> tuple[str, list[str], dict[str, list[str]]]:
    """Summary line, prose paragraphs, and titled ``\\b`` blocks ("Examples:" ...)."""
    text = inspect.cleandoc(text or "").split("\f")[0]
    chunks = [c for c in re.split(r"\n[ \t]*\n", text) if c.strip()]
    if not chunks:
        return "", [], {}
    summary = " ".join(line.strip() for line in chunks[0].splitlines())
    paragraphs: list[str] = []
    blocks: dict[str, list[str]] = {}
    for chunk in chunks[1:]:
        lines = chunk.splitlines()
        if lines[0].strip() == "\b":  # Click's "do not rewrap" marker
            body = textwrap.dedent("\n".join(lines[1:])).splitlines()
            title, sep, rest = body[0].partition(":") if body else ("", "", "")
            if sep and not rest.strip() and len(body) > 1:
                blocks[title] = textwrap.dedent("\n".join(body[1:])).splitlines()
            else:
                paragraphs.append("\n".join(body))  # kept as lines (see _paragraph)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return summary, paragraphs, blocks


def command_docs(cli: click.Group) -> list[CommandDoc]:
    """The root group and every visible subcommand (depth first, names sorted)."""
    root = click.Context(
        cli,
        info_name=PROG,
        terminal_width=HELP_WIDTH,
        max_content_width=HELP_WIDTH,
        **cli.context_settings,
    )
    docs: list[CommandDoc] = []

    def visit(command: click.Command, ctx: click.Context, path: str) -> None:
        doc = CommandDoc(path, command, ctx)
        doc.summary, doc.paragraphs, doc.blocks = split_help(command.help or "")
        docs.append(doc)
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    visit(
                        sub,
                        click.Context(sub, info_name=name, parent=ctx, **sub.context_settings),
                        f"{path} {name}",
                    )

    visit(cli, root, PROG)
    return docs


def subcommands(group: click.Group) -> dict[str, click.Command]:
    """Every subcommand of ``group`` by name, imported (a lazy group lists names only)."""
    ctx = click.Context(group, info_name=PROG)
    found = {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}
    return {name: command for name, command in found.items() if command is not None}


def command_index(cli: click.Group) -> str:
    entries = {name: index_entry(command) for name, command in subcommands(cli).items()}
    return json.dumps(entries, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def exit_codes(cli: click.Command) -> list[tuple[str, str]]:
    """(code, meaning) pairs from the root group's epilog, the one place they are listed."""
    text = " ".join(
        line.strip() for line in (cli.epilog or "").splitlines() if line.strip() != "\b"
    )
    text = text.split(":", 1)[1] if text.startswith("Exit codes:") else ""
    pairs = []
    for item in text.rstrip(".").split(" · "):
        code, _, meaning = item.strip().partition(" ")
        if code.isdigit():
            pairs.append((code, meaning))
    return pairs


def visible_params(doc: CommandDoc) -> list[click.Parameter]:
    return [p for p in doc.command.get_params(doc.ctx) if not getattr(p, "hidden", False)]


# -- man pages -----------------------------------------------------------------------------

_ROFF_CHARS = {"\\": r"\e", "-": r"\-", "'": r"\(aq", "`": r"\(ga", "~": r"\(ti", "^": r"\(ha"}


def roff(text: str) -> str:
    """Escape text for a roff text line (never a request line)."""
    out = "".join(
        _ROFF_CHARS.get(ch, ch) if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text
    )
    return "\\&" + out if out.startswith(".") else out


def _names(opts: list[str]) -> str:
    # Short options first, as in --help.
    ordered = sorted(opts, key=lambda o: len(o) - len(o.lstrip("-")))
    return ", ".join(r"\fB" + roff(o) + r"\fR" for o in ordered)


def _metavar(param: click.Parameter, ctx: click.Context) -> str:
    # \: lets a long choice list break after each "|".
    return r"\fI" + roff(param.make_metavar(ctx)).replace("|", r"|\:") + r"\fR"


def _option_tag(param: click.Option, ctx: click.Context) -> str:
    tag = _names(param.opts)
    if param.secondary_opts:
        tag += " / " + _names(param.secondary_opts)
    if not param.is_flag and not param.count:
        tag += " " + _metavar(param, ctx)
    return tag


def _usage(doc: CommandDoc) -> str:
    pieces = doc.command.collect_usage_pieces(doc.ctx)
    return r"\fB" + roff(doc.path) + r"\fR " + roff(" ".join(pieces))


def _preformatted(lines: list[str]) -> list[str]:
    return [".nf", *(roff(line) if line.strip() else "" for line in lines), ".fi"]


def _paragraph(text: str) -> list[str]:
    return _preformatted(text.splitlines()) if "\n" in text else [roff(text)]


def man_page(doc: CommandDoc, all_docs: list[CommandDoc], cli: click.Command) -> str:
    is_root = doc.path == PROG
    title = roff(doc.page.upper())
    lines = [
        rf".\" Generated by {REGENERATE} from the Click command tree; do not edit.",
        f'.TH "{title}" "1" "{MAN_DATE}" "{PROG} {__version__}" "comfyctl manual"',
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{roff(doc.page)} \\- {roff(doc.summary.rstrip('.'))}",
        ".SH SYNOPSIS",
        _usage(doc),
        ".SH DESCRIPTION",
    ]
    for n, paragraph in enumerate([doc.summary, *doc.paragraphs]):
        if n:
            lines.append(".PP")
        lines += _paragraph(paragraph)
    if not is_root:
        lines += [".PP", f"Global options go before the command name; see \\fB{PROG}\\fR(1)."]
    if is_root:
        lines.append(".SH COMMANDS")
        for sub in all_docs[1:]:
            lines += [
                ".TP",
                r"\fB" + roff(sub.path[len(PROG) + 1 :]) + r"\fR",
                roff(sub.summary) + f" See \\fB{roff(sub.page)}\\fR(1).",
            ]
    params = [p for p in visible_params(doc) if isinstance(p, click.Option)]
    if params:
        lines.append(".SH OPTIONS" if not is_root else ".SH GLOBAL OPTIONS")
        for param in params:
            record = param.get_help_record(doc.ctx)
            lines += [".TP", _option_tag(param, doc.ctx), roff(record[1] if record else "")]
    for title_, block in doc.blocks.items():
        lines += [f".SH {roff(title_.upper())}", ".PP", ".RS 4", *_preformatted(block), ".RE"]
    lines.append(".SH EXIT STATUS")
    for code, meaning in exit_codes(cli):
        lines += [".TP", rf"\fB{code}\fR", roff(meaning)]
    if is_root:
        lines.append(".SH ENVIRONMENT")
        for name, meaning in ENVIRONMENT:
            lines += [".TP", rf"\fB{roff(name)}\fR", roff(meaning)]
        lines.append(".SH FILES")
        for name, meaning in FILES:
            lines += [".TP", rf"\fI{roff(name)}\fR", roff(meaning)]
    others = [d.page for d in all_docs if d is not doc]
    lines.append(".SH SEE ALSO")
    lines.append(",\n".join(f".BR {roff(page)} (1)" for page in others))
    return "\n".join(lines) + "\n"


def man_pages(cli: click.Group) -> dict[str, str]:
    docs = command_docs(cli)
    return {f"man/{doc.page}.1": man_page(doc, docs, cli) for doc in docs}


# -- README reference ----------------------------------------------------------------------


def command_reference(cli: click.Group) -> str:
    """Every command's --help, as markdown, at a fixed width."""
    parts = [f"<!-- Generated by `{REGENERATE}` from the Click command tree; do not edit. -->"]
    for doc in command_docs(cli):
        parts += ["", f"### {doc.path}", "", "```text", doc.command.get_help(doc.ctx), "```"]
    return "\n".join(parts) + "\n"


def with_reference(readme: str, reference: str) -> str:
    """``readme`` with the text between the markers replaced by ``reference``."""
    start, end = readme.find(REFERENCE_START), readme.find(REFERENCE_END)
    if start < 0 or end < start:
        raise ValueError(f"{README} lacks the {REFERENCE_START} ... {REFERENCE_END} markers")
    head = readme[: start + len(REFERENCE_START)]
    return f"{head}\n{reference}{readme[end:]}"


# -- generating and checking ---------------------------------------------------------------


def generate(cli: click.Group, root: Path = REPO) -> dict[str, str]:
    """Every generated file (path relative to ``root`` -> content), built in memory."""
    files = {path: completion_source(cli, shell) for shell, path in COMPLETION_FILES.items()}
    files.update(man_pages(cli))
    files[COMMAND_INDEX] = command_index(cli)
    files[README] = with_reference(
        (root / README).read_text(encoding="utf-8"), command_reference(cli)
    )
    return files


def _obsolete(root: Path, files: dict[str, str]) -> Iterator[str]:
    """Generated man pages whose command no longer exists."""
    for path in sorted((root / "man").glob(f"{PROG}*.1")):
        rel = path.relative_to(root).as_posix()
        if rel not in files:
            yield rel


def stale(cli: click.Group, root: Path = REPO) -> list[str]:
    """Generated files under ``root`` that differ from what ``cli`` produces now."""
    files = generate(cli, root)
    differ = []
    for rel, content in files.items():
        path = root / rel
        if not path.is_file() or path.read_bytes() != content.encode("utf-8"):
            differ.append(rel)
    return sorted([*differ, *_obsolete(root, files)])


def write(cli: click.Group, root: Path = REPO) -> list[str]:
    """Rewrite the generated files under ``root``; returns those that changed."""
    files = generate(cli, root)
    changed = []
    for rel, content in files.items():
        path = root / rel
        data = content.encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            changed.append(rel)
    for rel in _obsolete(root, files):
        (root / rel).unlink()
        changed.append(rel)
    return sorted(changed)


def main(argv: list[str] | None = None) -> int:
    from comfyctl.cli import cli

    parser = argparse.ArgumentParser(
        prog=f"python -m {__name__}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 listing the files that are out of date",
    )
    parser.add_argument(
        "--root", type=Path, default=REPO, help="the checkout to write into (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if not (args.root / README).is_file():
        parser.error(f"{args.root} is not a comfyctl checkout (no {README}); pass --root")
    if args.check:
        outdated = stale(cli, args.root)
        for rel in outdated:
            print(f"out of date: {rel}", file=sys.stderr)
        if outdated:
            print(f"Run: {REGENERATE}", file=sys.stderr)
        return 1 if outdated else 0
    for rel in write(cli, args.root):
        print(f"wrote {rel}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
