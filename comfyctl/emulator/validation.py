"""Prompt validation with ComfyUI's error shapes (``POST /prompt`` answers).

Follows the behaviour of ``execution.validate_prompt`` / ``validate_inputs``: the first
pass rejects unknown classes and prompts without output nodes; then every output node is
validated recursively through its links, and per-node errors are collected in
``node_errors`` with their ``dependent_outputs``. Input values are converted in place
(``int()``/``float()``/``str()``/``bool()``), as the real server does, so a queued prompt
shows ``86400.0`` for a FLOAT given as ``86400``.

Inputs of the wrong Python type make the real server raise (a 500 answer); so does this
module, on purpose, by using the same plain operations (``'class_type' in node``,
``prompt[o_id]``...). Combo (list) inputs are checked against their options
(``value_not_in_list``); folder combos (model files, input images) against the folders
passed as ``dirs``, and not at all without them. A node's ``VALIDATE_INPUTS``
(LoadImage: the file must exist) answers ``custom_validation_failed``, and the inputs it
takes skip the range and list checks, as in ComfyUI.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from comfyctl.emulator.nodes import CATALOGUE, Directories, FolderFiles, NodeSpec, combo_options

ValidationResult = tuple[bool, "dict[str, Any] | None", list[str], dict[str, Any]]
_NodeResult = tuple[bool, list[dict[str, Any]], str]


def full_type_name(klass: type) -> str:
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return f"{module}.{klass.__qualname__}"


def _types_compatible(received: Any, expected: Any) -> bool:
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    if "*" in (received, expected):
        return True
    received_types = {t.strip() for t in received.split(",")}
    expected_types = {t.strip() for t in expected.split(",")}
    return bool(received_types & expected_types)


def _error(kind: str, message: str, details: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _validate_node(
    prompt: Any,
    unique_id: Any,
    validated: dict[Any, _NodeResult],
    visiting: list[Any],
    catalogue: dict[str, NodeSpec],
    dirs: Directories | None,
) -> _NodeResult:
    if unique_id in validated:
        return validated[unique_id]
    if unique_id in visiting:
        path = [*visiting[visiting.index(unique_id) :], unique_id]
        cycle = list(dict.fromkeys(path))
        details = " -> ".join(f"{n} ({prompt[n]['class_type']})" for n in path)
        for node_id in cycle:
            extra = {"node_id": node_id, "cycle_nodes": cycle}
            error = _error("dependency_cycle", "Dependency cycle detected", details, extra)
            validated[node_id] = (False, [error], node_id)
        return validated[unique_id]

    inputs = prompt[unique_id]["inputs"]
    spec = catalogue[prompt[unique_id]["class_type"]]
    errors: list[dict[str, Any]] = []
    valid = True

    for name in spec.input_names():
        input_info = spec.input_spec(name)
        assert input_info is not None
        input_type, category, options = input_info
        listed = True
        if isinstance(input_type, FolderFiles):
            listed = dirs is not None
            input_type = combo_options(input_type, dirs)
        config = [input_type, options] if options else [input_type]
        if name not in inputs:
            if category == "required":
                errors.append(
                    _error(
                        "required_input_missing",
                        "Required input is missing",
                        name,
                        {"input_name": name},
                    )
                )
            continue

        value = inputs[name]
        if isinstance(value, list):
            if len(value) != 2:
                errors.append(
                    _error(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        name,
                        {"input_name": name, "input_config": config, "received_value": value},
                    )
                )
                continue
            o_id = value[0]
            o_class_type = prompt[o_id]["class_type"]
            received_type = catalogue[o_class_type].outputs[value[1]]
            if not _types_compatible(received_type, input_type):
                errors.append(
                    _error(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        f"{name}, received_type({received_type}) mismatch input_type({input_type})",
                        {
                            "input_name": name,
                            "input_config": config,
                            "received_type": received_type,
                            "linked_node": value,
                        },
                    )
                )
                continue
            try:
                visiting.append(unique_id)
                try:
                    linked = _validate_node(prompt, o_id, validated, visiting, catalogue, dirs)
                finally:
                    visiting.pop()
                if linked[0] is False:
                    valid = False
                    continue
            except Exception as ex:
                typ, _, tb = sys.exc_info()
                assert typ is not None
                valid = False
                reason = _error(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    str(ex),
                    {
                        "input_name": name,
                        "input_config": config,
                        "exception_message": str(ex),
                        "exception_type": full_type_name(typ),
                        "traceback": traceback.format_tb(tb),
                        "linked_node": value,
                    },
                )
                validated[o_id] = (False, [reason], o_id)
                continue
        else:
            try:
                if isinstance(value, dict) and "__value__" in value:
                    value = value["__value__"]
                    inputs[name] = value
                converter = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
                if isinstance(input_type, str) and input_type in converter:
                    value = converter[input_type](value)
                    inputs[name] = value
            except Exception as ex:
                errors.append(
                    _error(
                        "invalid_input_type",
                        f"Failed to convert an input value to a {input_type} value",
                        f"{name}, {value}, {ex}",
                        {
                            "input_name": name,
                            "input_config": config,
                            "received_value": value,
                            "exception_message": str(ex),
                        },
                    )
                )
                continue
            if name in spec.validate_args:
                continue  # VALIDATE_INPUTS takes this input: it checks it alone
            if "min" in options and value < options["min"]:
                errors.append(
                    _error(
                        "value_smaller_than_min",
                        f"Value {value} smaller than min of {options['min']}",
                        name,
                        {"input_name": name, "input_config": config, "received_value": value},
                    )
                )
                continue
            if "max" in options and value > options["max"]:
                errors.append(
                    _error(
                        "value_bigger_than_max",
                        f"Value {value} bigger than max of {options['max']}",
                        name,
                        {"input_name": name, "input_config": config, "received_value": value},
                    )
                )
                continue
            if isinstance(input_type, list) and listed and value not in input_type:
                # Long lists (scanned model files) are summarised, as ComfyUI does.
                long_list = len(input_type) > 20
                list_info = f"(list of length {len(input_type)})" if long_list else str(input_type)
                errors.append(
                    _error(
                        "value_not_in_list",
                        "Value not in list",
                        f"{name}: '{value}' not in {list_info}",
                        {
                            "input_name": name,
                            "input_config": None if long_list else config,
                            "received_value": value,
                        },
                    )
                )
                continue

    wanted = {name: inputs[name] for name in spec.validate_args if name in inputs}
    if (
        spec.validate_inputs is not None
        and dirs is not None
        and len(wanted) == len(spec.validate_args)
        and not any(isinstance(v, list) for v in wanted.values())
    ):
        verdict = spec.validate_inputs(wanted, dirs)
        if verdict is not True:
            for name in wanted:
                details = name if verdict is False else f"{name} - {verdict}"
                errors.append(
                    _error(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        details,
                        {"input_name": name},
                    )
                )

    previous = validated.get(unique_id, (True, [], unique_id))
    result = (
        previous[0] and valid and not errors,
        previous[1] + [e for e in errors if e not in previous[1]],
        unique_id,
    )
    validated[unique_id] = result
    return result


def validate_prompt(
    prompt: Any,
    partial_execution_targets: Any = None,
    *,
    newest: bool = False,
    catalogue: dict[str, NodeSpec] | None = None,
    dirs: Directories | None = None,
) -> ValidationResult:
    """``(valid, error, outputs_to_execute, node_errors)`` like ComfyUI.

    ``newest`` selects the newest server's wording for unknown / missing classes
    (``missing_node_type``) instead of 0.3.64's ``invalid_prompt``.
    """
    catalogue = CATALOGUE if catalogue is None else catalogue
    outputs: list[Any] = []
    for x in prompt:
        node = prompt[x]
        if "class_type" not in node:
            if newest:
                title = node.get("_meta", {}).get("title") if isinstance(node, dict) else None
                error = _error(
                    "missing_node_type",
                    f"Node '{title or f'ID #{x}'}' has no class_type. The workflow may be "
                    "corrupted or a custom node is missing.",
                    f"Node ID '#{x}'",
                    {"node_id": x, "class_type": None, "node_title": title},
                )
            else:
                error = _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{x}'",
                    {},
                )
            return False, error, [], {}
        class_type = node["class_type"]
        spec = catalogue.get(class_type)
        if spec is None:
            if newest:
                title = node.get("_meta", {}).get("title", class_type)
                error = _error(
                    "missing_node_type",
                    f"Node '{title}' not found. The custom node may not be installed.",
                    f"Node ID '#{x}'",
                    {"node_id": x, "class_type": class_type, "node_title": title},
                )
            else:
                error = _error(
                    "invalid_prompt",
                    f"Cannot execute because node {class_type} does not exist.",
                    f"Node ID '#{x}'",
                    {},
                )
            return False, error, [], {}
        if spec.output_node and (
            partial_execution_targets is None or x in partial_execution_targets
        ):
            outputs.append(x)

    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", "", {}), [], {}

    good_outputs: list[Any] = []
    failures: list[tuple[Any, list[dict[str, Any]]]] = []
    node_errors: dict[Any, dict[str, Any]] = {}
    validated: dict[Any, _NodeResult] = {}
    for output in outputs:
        try:
            valid, reasons, _ = _validate_node(prompt, output, validated, [], catalogue, dirs)
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            assert typ is not None
            valid = False
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(ex),
                    {"exception_type": full_type_name(typ), "traceback": traceback.format_tb(tb)},
                )
            ]
            validated[output] = (False, reasons, output)
        if valid is True:
            good_outputs.append(output)
            continue
        failures.append((output, reasons))
        for node_id, (node_valid, node_reasons, _) in validated.items():
            # Nodes downstream of a broken node are invalid too but carry no error of
            # their own; ComfyUI leaves them out of node_errors.
            if node_valid is not True and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(output)

    if not good_outputs:
        details = "\n".join(
            f"{error['message']}: {error['details']}" for _, errors in failures for error in errors
        )
        error = _error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details, {}
        )
        return False, error, [], node_errors
    return True, None, good_outputs, node_errors
