"""One module per command (or group of related commands), imported only when needed.

``COMMANDS`` says where each command lives, so ``comfyctl watch`` imports the watch module
and nothing else (Click's LazyGroup pattern). The command list in ``--help`` and the
completion of command names need each command's one-line help; they read it from
``index.json``, which ``python -m comfyctl.docgen`` writes from the commands themselves
(and ``--check`` verifies), so listing commands imports none of them.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

#: command name -> "module:attribute" of its click.Command. A new command goes here.
COMMANDS = {
    "cancel": "comfyctl.commands.steer:cancel_command",
    "completion": "comfyctl.commands.completion:command",
    "convert": "comfyctl.commands.workflow:convert_command",
    "debug-tasks": "comfyctl.commands.steer:debug_command",
    "demo": "comfyctl.commands.demo:command",
    "detect-stuck": "comfyctl.commands.stuck:detect_command",
    "history": "comfyctl.commands.history:command",
    "metrics": "comfyctl.commands.metrics:command",
    "recover": "comfyctl.commands.stuck:recover_command",
    "servers": "comfyctl.commands.servers:command",
    "submit": "comfyctl.commands.submit:command",
    "validate": "comfyctl.commands.workflow:validate_command",
    "watch": "comfyctl.commands.watch:command",
}
INDEX = Path(__file__).with_name("index.json")


def index_entry(command: click.Command) -> dict[str, Any]:
    """What listing a command needs, as ``index.json`` keeps it (Click reads only the
    first paragraph of the help for a command list)."""
    return {
        "help": (command.help or "").partition("\n\n")[0],
        "short_help": command.short_help,
        "hidden": command.hidden,
        "deprecated": command.deprecated,
    }


class LazyGroup(click.Group):
    """A group whose subcommands in ``COMMANDS`` are imported on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing = 0
        self._index: dict[str, Any] | None = None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            listed = self._listed(cmd_name) if self._listing else None
            if listed is not None:
                return listed
            module, _, attr = COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with self._from_index():
            super().format_commands(ctx, formatter)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        with self._from_index():
            return super().shell_complete(ctx, incomplete)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.NoSuchCommand as exc:  # Click suggests only from the commands loaded
            raise click.NoSuchCommand(
                exc.command_name, possibilities=self.list_commands(ctx), ctx=ctx
            ) from None

    @contextmanager
    def _from_index(self) -> Iterator[None]:
        self._listing += 1
        try:
            yield
        finally:
            self._listing -= 1

    def _listed(self, name: str) -> click.Command | None:
        """A stand-in carrying only what a command list shows; None if the index lacks it
        (the real command is then imported, so a stale index costs time, never accuracy)."""
        if self._index is None:
            try:
                self._index = json.loads(INDEX.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._index = {}
        entry = self._index.get(name)
        if not isinstance(entry, dict):
            return None
        return click.Command(
            name,
            help=entry.get("help"),
            short_help=entry.get("short_help"),
            hidden=bool(entry.get("hidden")),
            deprecated=entry.get("deprecated") or False,
        )
