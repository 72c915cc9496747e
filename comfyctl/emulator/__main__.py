"""``python -m comfyctl.emulator --port N [--fault NAME[=VALUE] ...]``: serve an emulated
ComfyUI until Ctrl-C, optionally misbehaving, for testing scripts against a bad server.

The ``--fault`` names are derived from the fields of :class:`Faults` (and their help from the
fields' ``#:`` comments), so a fault mode added there is a command-line switch at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import re
import signal
import sys
import textwrap
import threading
import types
import typing
from dataclasses import dataclass
from types import FrameType
from typing import Any

from comfyctl.emulator.faults import Faults
from comfyctl.emulator.runner import Emulator

TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True)
class FaultSwitch:
    """One field of :class:`Faults` as ``--fault NAME[=VALUE]``."""

    name: str  # the command-line spelling: the field name with dashes
    field: str
    kind: type  # bool, int, float, str, or a container given as JSON
    help: str

    @property
    def metavar(self) -> str:
        if self.kind is bool:
            return self.name
        what = {int: "INT", float: "NUMBER", str: "TEXT"}.get(self.kind, "JSON")
        if self.kind in (tuple, list):
            what = "A,B,..."
        return f"{self.name}={what}"

    def parse(self, value: str | None) -> Any:
        """The field's value from the text after ``=`` (None: the switch had no ``=``)."""
        if self.kind is bool:
            if value is None or value.lower() in TRUE:
                return True
            if value.lower() in FALSE:
                return False
            raise ValueError(f"--fault {self.name} takes no value, or one of on/off")
        if value is None:
            raise ValueError(f"--fault {self.name} needs a value: --fault {self.metavar}")
        try:
            if self.kind in (int, float, str):
                return self.kind(value)
            if self.kind in (tuple, list) and not value.lstrip().startswith("["):
                return self.kind(part.strip() for part in value.split(",") if part.strip())
            parsed = json.loads(value)
            if self.kind is tuple and isinstance(parsed, list):
                parsed = tuple(parsed)
        except ValueError:
            raise ValueError(f"--fault {self.metavar}: {value!r} is not a valid value") from None
        if not isinstance(parsed, self.kind):
            what = {"dict": "object", "list": "array"}.get(self.kind.__name__, self.kind.__name__)
            raise ValueError(f"--fault {self.metavar}: expected a JSON {what}")
        return parsed


def _field_docs() -> dict[str, str]:
    """Each field's ``#:`` comment (Sphinx's attribute-doc convention), from the source.

    A field right after another, with no comment of its own, shares the one above it."""
    try:
        source = inspect.getsource(Faults)
    except (OSError, TypeError):  # no source shipped: names and types only
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    last = ""
    for line in source.splitlines():
        stripped = line.strip()
        comment = re.match(r"#:\s?(.*)", stripped)
        field = re.match(r"(\w+)\s*:", stripped)
        if comment:
            pending.append(comment.group(1))
        elif field and not stripped.startswith(("def ", "class ")):
            last = " ".join(pending) if pending else last
            docs[field.group(1)] = last.replace("``", "")  # reST markup reads badly in --help
            pending = []
        else:
            pending, last = [], ""
    return docs


def _kind(annotation: Any) -> type:
    """bool/int/float/str, or the container type, of ``X | None`` or ``X``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
    origin = typing.get_origin(annotation) or annotation
    return origin if isinstance(origin, type) else str


def fault_switches() -> dict[str, FaultSwitch]:
    """Every fault mode the emulator has, by command-line name."""
    hints = typing.get_type_hints(Faults)
    docs = _field_docs()
    switches = {}
    for spec in dataclasses.fields(Faults):
        name = spec.name.replace("_", "-")
        switches[name] = FaultSwitch(
            name, spec.name, _kind(hints[spec.name]), docs.get(spec.name, "")
        )
    return switches


def _find(switches: dict[str, FaultSwitch], name: str) -> FaultSwitch:
    """The switch called ``name``, or the only one with ``name`` as a word ("hang")."""
    if name in switches:
        return switches[name]
    having = [s for s in switches if name in s.split("-")]
    if len(having) == 1:
        return switches[having[0]]
    words = {word: s for s in switches for word in s.split("-")}
    close = (
        having
        or difflib.get_close_matches(name, switches, n=3)
        or [words[w] for w in difflib.get_close_matches(name, words, n=3)]
    )
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(f"unknown fault {name!r}{hint} (see --help for the list)")


def apply_faults(faults: Faults, specs: list[str]) -> list[str]:
    """Sets ``NAME[=VALUE]`` switches on ``faults``; returns them as applied, for the log.

    Raises ValueError with a message for the user on an unknown name or a bad value."""
    switches = fault_switches()
    applied = []
    for spec in specs:
        name, has_value, value = spec.partition("=")
        switch = _find(switches, name.strip().replace("_", "-"))
        setattr(faults, switch.field, switch.parse(value if has_value else None))
        applied.append(switch.name + (f"={value}" if has_value else ""))
    return applied


def _faults_epilog() -> str:
    lines = ["fault modes (--fault, repeatable; set from the start):"]
    for switch in fault_switches().values():
        lines.append(f"  {switch.metavar}")
        if switch.help:
            lines += textwrap.wrap(
                switch.help, 76, initial_indent="      ", subsequent_indent="      "
            )
    lines += [
        "",
        "signals: SIGHUP restarts the server (queue, history and sockets lost, as",
        "a real restart); SIGUSR1 drops every WebSocket; SIGINT or SIGTERM stops it.",
        "",
        "example: python -m comfyctl.emulator --port 8188 --fault http-status=502",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comfyctl.emulator",
        description="Serve an emulated ComfyUI server (on loopback by default), optionally\n"
        "misbehaving in the ways listed below, to test scripts against a bad server.",
        epilog=_faults_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8188, help="port (0: any free port)")
    parser.add_argument(
        "--jobs-api", action="store_true", help="serve the newest server's /api/jobs routes"
    )
    parser.add_argument(
        "--output-dir", default=None, help="output folder (default: a temporary one)"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="switch a fault mode on (see the list below); repeat for several",
    )
    args = parser.parse_args(argv)

    emulator = Emulator(
        host=args.host, port=args.port, jobs_api=args.jobs_api, output_dir=args.output_dir
    )
    try:
        applied = apply_faults(emulator.faults, args.fault)
    except ValueError as err:
        emulator.stop()
        parser.error(str(err))

    stop, restart, drop = threading.Event(), threading.Event(), threading.Event()
    events = {int(signal.SIGHUP): restart, int(signal.SIGUSR1): drop}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        events.get(signum, stop).set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, on_signal)

    try:
        emulator.start()
    except OSError as err:
        emulator.stop()
        print(
            f"comfyctl emulator: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr
        )
        return 1
    try:
        print(f"ComfyUI emulator listening on {emulator.url}", flush=True)
        print(f"output directory: {emulator.output_dir}", file=sys.stderr, flush=True)
        if applied:
            print(f"faults: {', '.join(applied)}", file=sys.stderr, flush=True)
        while not stop.wait(0.2):
            # The loop, not the handler, acts: a signal handler must not block on the server.
            if restart.is_set():
                restart.clear()
                emulator.restart()
                print(
                    "restarted: queue, history and WebSockets lost, outputs kept",
                    file=sys.stderr,
                    flush=True,
                )
            if drop.is_set():
                drop.clear()
                emulator.drop_websockets()
                print("dropped every WebSocket", file=sys.stderr, flush=True)
    finally:
        emulator.stop()
    print("ComfyUI emulator stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
