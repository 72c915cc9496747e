"""A job's graph as the server it goes to gets it.

A workflow file is read once (API or UI format). For each server a job goes to, it is
made into that server's prompt: a UI-format workflow converted with the server's own
``/object_info``, the ``--set`` values applied (an input the file left out only when the
server declares it), and ``@PATH`` files uploaded to that server. Uploads happen here,
before any ledger record exists, so a failed upload leaves no trace of a job never sent.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from comfyctl.config import ServerSpec
from comfyctl.errors import WorkflowInvalid
from comfyctl.inputs import Assignment, FileInput, Uploader
from comfyctl.objectinfo import Catalogue, ObjectInfoCache
from comfyctl.submission import check_api_graph, load_json
from comfyctl.uiworkflow import is_ui_workflow, node_types, to_api
from comfyctl.validate import Problem, check


@dataclass
class Workflow:
    source: str
    data: dict[str, Any]
    ui: bool


def parse_any_workflow(raw: bytes, source: str) -> Workflow:
    """API format ({node_id: {class_type, inputs}}), a saved POST /prompt body, or the
    web UI's saved format ("nodes" and "links")."""
    data = load_json(raw, source)
    if is_ui_workflow(data):
        if not isinstance(data["nodes"], list) or not isinstance(data["links"], list):
            raise WorkflowInvalid(
                f"{source} looks like a UI-format workflow, but its 'nodes' "
                "and 'links' are not lists."
            )
        if not data["nodes"]:
            raise WorkflowInvalid(f"{source} is a UI-format workflow with no nodes.")
        return Workflow(source, data, True)
    return Workflow(source, check_api_graph(data, source), False)


@dataclass
class Prepared:
    graph: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    files: list[FileInput] = field(default_factory=list)  # uploaded (or to upload)


class Preparer:
    """Makes (and remembers, per server URL) each server's version of one workflow."""

    def __init__(
        self,
        workflow: Workflow,
        assignments: list[Assignment],
        catalogues: ObjectInfoCache,
        uploader: Uploader | None,
    ) -> None:
        self.workflow = workflow
        self.assignments = assignments
        self.catalogues = catalogues
        self.uploader = uploader  # None: leave @PATH inputs as file names (validate)
        self._done: dict[str, Prepared] = {}

    def for_server(self, spec: ServerSpec, catalogue: Catalogue | None = None) -> Prepared:
        """``catalogue`` given: a fresh one to check against (then unknown node types are
        left for the check to report instead of failing the conversion)."""
        done = self._done.get(spec.url)
        if done is not None:
            return done
        warnings: list[str] = []
        strict = catalogue is None
        if self.workflow.ui:
            catalogue = catalogue or self.catalogues.get(spec, needs=node_types(self.workflow.data))
            converted = to_api(
                self.workflow.data, catalogue.get, f"Server {spec.name}", strict=strict
            )
            graph, warnings = converted.prompt, converted.warnings
        else:
            graph = copy.deepcopy(self.workflow.data)
        files = []
        for assignment in self.assignments:
            node = graph.get(assignment.node)
            if node is None:
                raise WorkflowInvalid(
                    f"--set {assignment.text!r}: the workflow has no node {assignment.node!r}.",
                    f"Nodes: {', '.join(sorted(graph))}.",
                )
            inputs = node.setdefault("inputs", {})
            if assignment.input not in inputs:
                catalogue = catalogue or self.catalogues.get(spec)
                if not _declares(catalogue, node.get("class_type"), assignment.input):
                    raise WorkflowInvalid(
                        f"--set {assignment.text!r}: node {assignment.node!r} "
                        f"({node.get('class_type')}) has no input {assignment.input!r} "
                        f"on server {spec.name}.",
                        f"Its inputs: {', '.join(sorted(inputs)) or 'none'}.",
                    )
            value = assignment.value
            if isinstance(value, FileInput):
                files.append(value)
                value = (
                    self.uploader.ensure(spec, value)
                    if self.uploader is not None
                    else value.path.name
                )
            inputs[assignment.input] = value
        prepared = Prepared(graph, warnings, files)
        self._done[spec.url] = prepared
        return prepared


def _declares(catalogue: Catalogue, class_type: Any, name: str) -> bool:
    info = catalogue.get(str(class_type)) or {}
    declared = info.get("input") or {}
    return any(name in (declared.get(section) or {}) for section in ("required", "optional"))


def check_for_server(preparer: Preparer, spec: ServerSpec) -> tuple[Prepared, list[Problem]]:
    """Every problem the workflow (with its --set values) has on ``spec``'s server, checked
    against the server's current /object_info and input folder."""
    catalogue = preparer.catalogues.get(spec, fresh=True)
    prepared = preparer.for_server(spec, catalogue)
    client = preparer.catalogues.client_for(spec)

    def input_exists(value: str) -> bool:
        folder, _, name = value.rpartition("/")
        return client.input_size(name, folder) is not None

    problems = check(
        prepared.graph,
        catalogue.get,
        spec.name,
        classes=list(catalogue.nodes),
        input_exists=input_exists,
        uploads={(f.node, f.input) for f in prepared.files},
    )
    return prepared, problems
