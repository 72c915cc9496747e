"""Checking an API prompt against one server's ``/object_info`` before it is queued.

The checks are the server's own (``execution.validate_inputs``): node types present,
required inputs given, links to existing nodes and outputs of a fitting type, numbers
within min/max, combo values among the server's options (model files, samplers), and
files in the server's input folder for upload combos (LoadImage). Unlike the server,
every problem is reported in one pass, each with the nearest valid values. Like the
server, only nodes that feed an output node are checked (the rest never runs), except
that an unknown node type anywhere is a problem (the server refuses the whole prompt).

Pure: the catalogue and the input-file check come in as functions.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from comfyctl.uiworkflow import UPLOAD_FLAGS

NodeInfo = Callable[[str], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Problem:
    node: str | None
    class_type: str | None
    input: str | None
    message: str
    nearest: tuple[str, ...] = ()

    def line(self) -> str:
        where = "workflow" if self.node is None else f"node {self.node} ({self.class_type})"
        if self.input is not None:
            where += f" {self.input}"
        text = f"{where}: {self.message}"
        if self.nearest:
            text += f"; nearest: {', '.join(self.nearest)}"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "class_type": self.class_type,
            "input": self.input,
            "message": self.message,
            "nearest": list(self.nearest),
        }


def _nearest(value: Any, options: Collection[Any], n: int = 3) -> tuple[str, ...]:
    names = [str(o) for o in options]
    close = difflib.get_close_matches(str(value), names, n=n, cutoff=0.4)
    return tuple(close) if close else tuple(names[:n])


def _spec_parts(spec: Any) -> tuple[Any, dict[str, Any]]:
    if not isinstance(spec, list) or not spec:
        return None, {}
    return spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _combo_options(kind: Any, options: dict[str, Any]) -> list[Any] | None:
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":  # the v3 node schema keeps the list in the options
        values = options.get("options")
        return values if isinstance(values, list) else None
    return None


def _types_fit(received: Any, expected: Any) -> bool:
    if received == expected or "*" in (received, expected):
        return True
    if isinstance(expected, list) or expected == "COMBO":
        return received in ("COMBO", "*") or isinstance(received, list)
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def check(
    prompt: dict[str, Any],
    node_info: NodeInfo,
    server: str,
    *,
    classes: Collection[str] = (),
    input_exists: Callable[[str], bool] | None = None,
    uploads: Collection[tuple[str, str]] = (),
) -> list[Problem]:
    """Every problem of ``prompt`` on ``server``. ``classes`` are the server's node types
    (for suggestions); ``input_exists(name)`` says whether the server's input folder has
    a file; ``uploads`` are (node, input) pairs comfyctl will upload before sending."""
    problems: list[Problem] = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        if node_info(class_type) is None:
            problems.append(
                Problem(
                    str(node_id),
                    class_type,
                    None,
                    f"server {server} has no node type {class_type!r}",
                    _nearest(class_type, classes) if classes else (),
                )
            )
    outputs = [
        n
        for n, node in prompt.items()
        if (node_info(node.get("class_type")) or {}).get("output_node")
    ]
    if not outputs:
        problems.append(
            Problem(
                None,
                None,
                None,
                "no output node (SaveImage, PreviewImage, ...): the server would run nothing",
            )
        )
    for node_id in _feeding(prompt, outputs):
        node = prompt[node_id]
        info = node_info(node.get("class_type"))
        if info is not None:
            problems += _check_node(
                prompt, str(node_id), node, info, node_info, server, input_exists, set(uploads)
            )
    return problems


def _feeding(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """The nodes the output nodes depend on, in prompt order."""
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        for value in (prompt[node_id].get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2:
                stack.append(str(value[0]))
    return [n for n in prompt if n in seen]


def _check_node(
    prompt: dict[str, Any],
    node_id: str,
    node: dict[str, Any],
    info: dict[str, Any],
    node_info: NodeInfo,
    server: str,
    input_exists: Callable[[str], bool] | None,
    uploads: set[tuple[str, str]],
) -> list[Problem]:
    class_type = node.get("class_type")
    inputs = node.get("inputs") or {}
    declared = info.get("input") or {}
    problems: list[Problem] = []

    def problem(name: str, message: str, nearest: tuple[str, ...] = ()) -> None:
        problems.append(Problem(node_id, class_type, name, message, nearest))

    for section in ("required", "optional"):
        for name, spec in (declared.get(section) or {}).items():
            kind, options = _spec_parts(spec)
            if name not in inputs:
                if section == "required":
                    problem(name, "required input is missing")
                continue
            value = inputs[name]
            if isinstance(value, list):
                for message in _link_problems(prompt, value, kind, node_info):
                    problem(name, message)
                continue
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
            choices = _combo_options(kind, options)
            if choices is not None:
                if value in choices:
                    continue
                if any(options.get(flag) for flag in UPLOAD_FLAGS):
                    if (node_id, name) in uploads or (
                        input_exists is not None and input_exists(str(value))
                    ):
                        continue
                    problem(
                        name,
                        f"file {value!r} is not in server {server}'s input folder",
                        _nearest(value, choices) if choices else (),
                    )
                    continue
                problem(
                    name,
                    f"{value!r} is not one of the {len(choices)} values server {server} offers",
                    _nearest(value, choices),
                )
                continue
            if kind in ("INT", "FLOAT"):
                try:
                    number = int(value) if kind == "INT" else float(value)
                except (TypeError, ValueError):
                    problem(name, f"{value!r} is not a{'n' if kind == 'INT' else ''} {kind} value")
                    continue
                if "min" in options and number < options["min"]:
                    problem(
                        name,
                        f"{value} is below the minimum {options['min']}",
                        (str(options["min"]),),
                    )
                elif "max" in options and number > options["max"]:
                    problem(
                        name,
                        f"{value} is above the maximum {options['max']}",
                        (str(options["max"]),),
                    )
    return problems


def _link_problems(
    prompt: dict[str, Any], value: list[Any], expected: Any, node_info: NodeInfo
) -> list[str]:
    if len(value) != 2:
        return [f"{value!r} is not a link [node_id, output_index]"]
    origin_id, slot = value
    origin = prompt.get(str(origin_id))
    if origin is None:
        return [f"is linked to node {origin_id}, which the workflow does not have"]
    info = node_info(origin.get("class_type"))
    if info is None:
        return []  # reported as an unknown node type
    outputs = info.get("output") or []
    if not isinstance(slot, int) or not 0 <= slot < len(outputs):
        return [
            f"is linked to output {slot} of node {origin_id}, which has {len(outputs)} output(s)"
        ]
    if not _types_fit(outputs[slot], expected):
        return [f"expects {expected}, but node {origin_id} output {slot} gives {outputs[slot]}"]
    return []
