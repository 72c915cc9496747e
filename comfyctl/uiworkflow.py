"""UI-format workflows (what the ComfyUI web UI saves: "nodes" and "links") to API prompts.

This follows what the frontend's ``graphToPrompt`` does when it queues a workflow, so a
saved workflow becomes the prompt the web UI would have sent to the same server:

* Widget values: ``widgets_values`` lists one value per widget, in the order the frontend
  makes widgets from the server's ``/object_info`` (``input_order``: required, then
  optional). Some widgets are saved but never sent: the ``control_after_generate``
  combo after a seed-like INT (or any input declaring ``control_after_generate``) and
  the upload button of ``image_upload``/``video_upload``/``audio_upload`` combos. A
  missing value takes the widget's default. A dict ``widgets_values`` maps by name.
* Links: an input's link is followed upstream through Reroute nodes and bypassed (mode 4)
  nodes (an input of the same slot and a matching type, else the first input of a
  matching type), into and out of subgraphs. A link from a muted (mode 2) node is dropped.
  A PrimitiveNode is not sent; its value becomes the linked widget's value.
* Not sent: Reroute, PrimitiveNode, Note, MarkdownNote, muted and bypassed nodes, groups
  (a layout aid), subgraph instances themselves (their inner nodes are sent under the
  id ``instance:inner``, nested as deep as the subgraphs are).
* A node class the server lacks is an error naming every such node.

Pure: the server's catalogue comes in as a function, nothing here talks to a server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyctl.errors import WorkflowInvalid

MUTED, BYPASSED = 2, 4
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20
#: Frontend-only nodes: never sent to the server.
VIRTUAL_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
#: Input types the frontend shows as a widget (``ComfyWidgets``); others are sockets.
WIDGET_TYPES = frozenset(
    {
        "INT",
        "FLOAT",
        "BOOLEAN",
        "STRING",
        "COMBO",
        "MARKDOWN",
        "COLOR",
        "TEXTAREA",
        "CURVE",
        "RANGE",
        "BOUNDING_BOX",
    }
)
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
SEED_NAMES = ("seed", "noise_seed")
MAX_DEPTH = 32

NodeInfo = Callable[[str], "dict[str, Any] | None"]


def is_ui_workflow(data: Any) -> bool:
    """The web UI's saved format has "nodes" and "links" (API format has neither)."""
    return isinstance(data, dict) and "nodes" in data and "links" in data


@dataclass
class Converted:
    prompt: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Link:
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int


@dataclass
class _Graph:
    nodes: dict[str, dict[str, Any]]
    links: dict[Any, _Link]
    definition: dict[str, Any] | None = None  # the subgraph definition, None at the root


@dataclass
class _Inst:
    """One node where it runs: in which graph, inside which subgraph instance."""

    exec_id: str
    node: dict[str, Any]
    graph: _Graph
    path: tuple[str, ...]
    container: _Inst | None

    @property
    def type(self) -> str:
        return str(self.node.get("type"))

    @property
    def mode(self) -> Any:
        return self.node.get("mode", 0)

    @property
    def inputs(self) -> list[dict[str, Any]]:
        inputs = self.node.get("inputs") or []
        return [i if isinstance(i, dict) else {} for i in inputs]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        outputs = self.node.get("outputs") or []
        return [o if isinstance(o, dict) else {} for o in outputs]


def widget_layout(info: dict[str, Any]) -> list[tuple[str, str, list[Any]]]:
    """The node's widgets as the frontend makes them: (name, kind, spec), kind being
    ``value`` (sent), ``control`` or ``upload`` (saved, never sent)."""
    layout: list[tuple[str, str, list[Any]]] = []
    inputs = info.get("input") or {}
    order = info.get("input_order") or {}
    upload = None
    for section in ("required", "optional"):
        table = inputs.get(section) or {}
        for name in order.get(section) or list(table):
            spec = table.get(name)
            if not isinstance(spec, list) or not spec:
                continue
            kind, options = spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if options.get("forceInput"):
                continue
            combo = isinstance(kind, list) or kind == "COMBO"
            if not combo and kind not in WIDGET_TYPES:
                continue
            layout.append((name, "value", spec))
            control = options.get("control_after_generate")
            if control is None and kind == "INT":
                control = name in SEED_NAMES
            if control and (combo or kind in ("INT", "FLOAT")):
                layout.append((name, "control", spec))
            if combo and any(options.get(flag) for flag in UPLOAD_FLAGS):
                upload = (name, "upload", spec)
        if section == "required" and upload is not None:
            layout.append(upload)  # the upload button ends the required widgets
            upload = None
    return layout


def default_value(spec: list[Any]) -> Any:
    """The value a new widget starts with (the frontend's defaults)."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    if isinstance(kind, list):
        return kind[0] if kind else None
    if kind == "COMBO":
        values = options.get("options") or []
        return values[0] if values else None
    return {"INT": 0, "FLOAT": 0, "BOOLEAN": False}.get(kind, "")


def widget_values(
    node: dict[str, Any], info: dict[str, Any], label: str, warnings: list[str]
) -> dict[str, Any]:
    """Input name -> value for the node's widgets (only the ones sent)."""
    layout = widget_layout(info)
    saved = node.get("widgets_values")
    values: dict[str, Any] = {}
    if isinstance(saved, dict):  # some nodes save their widgets by name
        for name, kind, spec in layout:
            if kind == "value":
                values[name] = saved.get(name, default_value(spec))
        return values
    saved = list(saved) if isinstance(saved, list) else []
    wanted = sum(1 for _, kind, _ in layout if kind == "value")
    # Saved but not sent: present in newer saves, absent in some older ones.
    extras = max(0, len(saved) - wanted)
    position = 0
    for name, kind, spec in layout:
        if kind != "value":
            if extras > 0 and position < len(saved):
                position += 1
                extras -= 1
            continue
        if position < len(saved):
            values[name] = saved[position]
            position += 1
        else:
            values[name] = default_value(spec)
    if "widgets_values" in node and (position < len(saved) or len(saved) < wanted):
        warnings.append(
            f"node {label}: {len(saved)} saved widget values for {wanted} "
            "widgets of the server's node; the server's node may differ from the "
            "one that saved the workflow, check the converted values."
        )
    return values


def _valid_connection(a: Any, b: Any) -> bool:
    """LiteGraph.isValidConnection: equal, a wildcard, or overlapping comma lists."""
    if not a or not b or a == "*" or b == "*" or a == b:
        return True
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    left = {t.strip().lower() for t in a.split(",")}
    right = {t.strip().lower() for t in b.split(",")}
    return bool(left & right)


class _Converter:
    def __init__(
        self, workflow: dict[str, Any], node_info: NodeInfo, server: str, strict: bool
    ) -> None:
        self.node_info = node_info
        self.server = server
        self.strict = strict
        definitions = workflow.get("definitions") or {}
        subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
        self.subgraphs: dict[str, dict[str, Any]] = {
            str(s["id"]): s for s in subgraphs or [] if isinstance(s, dict) and "id" in s
        }
        self.by_id: dict[str, _Inst] = {}
        self.order: list[_Inst] = []
        self.inner: dict[str, _Graph] = {}  # subgraph instance id -> its inner graph
        self.warnings: list[str] = []

    # -- flattening ----------------------------------------------------------------------

    def graph_of(self, data: dict[str, Any], definition: dict[str, Any] | None) -> _Graph:
        nodes = {}
        for node in data.get("nodes") or []:
            if isinstance(node, dict) and "id" in node:
                nodes[str(node["id"])] = node
        links: dict[Any, _Link] = {}
        for raw in data.get("links") or []:
            link = _parse_link(raw)
            if link is not None:
                links[link[0]] = link[1]
        return _Graph(nodes, links, definition)

    def flatten(self, graph: _Graph, path: tuple[str, ...], container: _Inst | None) -> None:
        if len(path) > MAX_DEPTH:
            raise WorkflowInvalid(
                "The workflow's subgraphs nest deeper than "
                f"{MAX_DEPTH} levels (a subgraph inside itself?)."
            )
        for node_id, node in graph.nodes.items():
            inst = _Inst(":".join((*path, node_id)), node, graph, path, container)
            self.by_id[inst.exec_id] = inst
            self.order.append(inst)
            definition = self.subgraphs.get(inst.type)
            if definition is not None:
                inner = self.graph_of(definition, definition)
                self.inner[inst.exec_id] = inner
                self.flatten(inner, (*path, node_id), inst)

    # -- resolving links -----------------------------------------------------------------

    def resolve_input(
        self, inst: _Inst, slot: int, seen: set[str], type_: Any = None
    ) -> tuple[str, Any] | None:
        """("link", [origin, slot]) or ("value", v) feeding ``inst``'s input ``slot``."""
        key = f"{inst.exec_id}[I]{slot}"
        if key in seen:
            raise WorkflowInvalid(f"The links into node {inst.exec_id} go round in a circle.")
        seen.add(key)
        inputs = inst.inputs
        if slot >= len(inputs):
            raise WorkflowInvalid(f"Node {inst.exec_id} ({inst.type}) has no input slot {slot}.")
        link_id = inputs[slot].get("link")
        if link_id is None:
            return None
        link = inst.graph.links.get(link_id)
        if link is None:
            raise WorkflowInvalid(
                f"Node {inst.exec_id} ({inst.type}) input "
                f"{inputs[slot].get('name')!r} names link {link_id}, which "
                "the workflow does not have."
            )
        if inst.container is not None and link.origin_id == SUBGRAPH_INPUT:
            return self._from_container(inst.container, link.origin_slot, seen)
        origin = self.by_id.get(":".join((*inst.path, str(link.origin_id))))
        if origin is None:
            raise WorkflowInvalid(
                f"Node {inst.exec_id} ({inst.type}) is linked from node "
                f"{link.origin_id}, which the workflow does not have."
            )
        return self.resolve_output(
            origin, link.origin_slot, type_ if type_ is not None else inputs[slot].get("type"), seen
        )

    def _from_container(
        self, container: _Inst, slot: int, seen: set[str]
    ) -> tuple[str, Any] | None:
        """An input of a subgraph, as the instance outside feeds it: its link, else its
        promoted widget's value, else nothing (the inner node keeps its own value)."""
        index = self._container_slot(container, slot)
        if index is None:
            return None
        own = container.inputs[index]
        if own.get("link") is not None:
            return self.resolve_input(container, index, seen)
        if own.get("widget") is None:
            return None
        saved = container.node.get("widgets_values")
        position = sum(1 for i in container.inputs[:index] if i.get("widget") is not None)
        if isinstance(saved, list) and position < len(saved):
            return ("value", saved[position])
        return None

    def _container_slot(self, container: _Inst, slot: int) -> int | None:
        """The instance's input for its subgraph's input ``slot``: the instance's saved
        inputs follow the definition's, matched by name in case they drifted."""
        inputs = container.inputs
        declared = self.subgraphs[container.type].get("inputs") or []
        name = (
            declared[slot].get("name")
            if slot < len(declared) and isinstance(declared[slot], dict)
            else None
        )
        if slot < len(inputs) and (name is None or inputs[slot].get("name") == name):
            return slot
        for index, candidate in enumerate(inputs):
            if name is not None and candidate.get("name") == name:
                return index
        return None

    def resolve_output(
        self, inst: _Inst, slot: int, type_: Any, seen: set[str]
    ) -> tuple[str, Any] | None:
        key = f"{inst.exec_id}[O]{slot}"
        if key in seen:
            raise WorkflowInvalid(f"The links out of node {inst.exec_id} go round in a circle.")
        seen.add(key)
        if inst.mode == BYPASSED:
            index = self._bypass_slot(inst, slot, type_)
            return None if index < 0 else self.resolve_input(inst, index, seen)
        definition = self.subgraphs.get(inst.type)
        if definition is not None:
            return self._subgraph_output(inst, definition, slot, type_, seen)
        if inst.type == "PrimitiveNode":
            saved = inst.node.get("widgets_values")
            return ("value", saved[0]) if isinstance(saved, list) and saved else None
        if inst.type in VIRTUAL_TYPES:
            if slot < len(inst.inputs):
                return self.resolve_input(inst, slot, seen, type_)
            return None
        return ("link", [inst.exec_id, slot])

    def _subgraph_output(
        self, inst: _Inst, definition: dict[str, Any], slot: int, type_: Any, seen: set[str]
    ) -> tuple[str, Any] | None:
        inner_graph = self.inner.get(inst.exec_id)
        if inner_graph is None:
            return None
        for link in inner_graph.links.values():
            if link.target_id == SUBGRAPH_OUTPUT and link.target_slot == slot:
                origin = self.by_id.get(f"{inst.exec_id}:{link.origin_id}")
                if origin is None:
                    raise WorkflowInvalid(
                        f"Subgraph {definition.get('name') or inst.type!r}"
                        f" output {slot} comes from node {link.origin_id}, "
                        "which the subgraph does not have."
                    )
                return self.resolve_output(origin, link.origin_slot, type_, seen)
        return None

    @staticmethod
    def _bypass_slot(inst: _Inst, slot: int, type_: Any) -> int:
        """The input a bypassed node passes through for output ``slot`` (the frontend's
        choice: same slot if its type fits, else an exact type match, else any fit)."""
        inputs = inst.inputs
        outputs = inst.outputs
        if type_ in ("*", ""):
            return slot if len(inputs) > slot else 0
        out_type = outputs[slot].get("type") if slot < len(outputs) else None
        if slot < len(inputs):
            same = inputs[slot].get("type")
            if _valid_connection(same, out_type) and _valid_connection(same, type_):
                return slot
        for index, candidate in enumerate(inputs):
            if candidate.get("type") == type_:
                return index
        for index, candidate in enumerate(inputs):
            kind = candidate.get("type")
            if _valid_connection(kind, out_type) and _valid_connection(kind, type_):
                return index
        return -1

    # -- output --------------------------------------------------------------------------

    def convert(self, workflow: dict[str, Any]) -> Converted:
        if isinstance(workflow.get("extra"), dict) and workflow["extra"].get("groupNodes"):
            raise WorkflowInvalid(
                "The workflow uses group nodes (the old 'workflow>...' nodes).",
                "Open it in a current ComfyUI and convert them to subgraphs, or export it in "
                "API format.",
            )
        self.flatten(self.graph_of(workflow, None), (), None)
        sent = [i for i in self.order if self._is_sent(i)]
        missing: dict[str, list[str]] = {}
        for inst in sent:
            if self.node_info(inst.type) is None:
                missing.setdefault(inst.type, []).append(inst.exec_id)
        if missing and self.strict:
            names = "; ".join(
                f"{kind} (node{'s' if len(ids) > 1 else ''} {', '.join(ids)})"
                for kind, ids in sorted(missing.items())
            )
            raise WorkflowInvalid(
                f"{self.server} has no node type {names}.",
                "Install the custom node package on that server, or choose a server that has it.",
            )
        prompt: dict[str, Any] = {}
        for inst in sent:
            info = self.node_info(inst.type)
            label = f"{inst.exec_id} ({inst.type})"
            inputs = (
                {}
                if info is None
                else {  # unknown (not strict): links only
                    name: _wrap(value)
                    for name, value in widget_values(inst.node, info, label, self.warnings).items()
                }
            )
            info = info or {}
            for slot, slot_info in enumerate(inst.inputs):
                resolved = self.resolve_input(inst, slot, set())
                name = slot_info.get("name")
                if resolved is None or not isinstance(name, str):
                    continue
                kind, value = resolved
                inputs[name] = value if kind == "link" else _wrap(value)
            title = inst.node.get("title") or info.get("display_name") or inst.type
            prompt[inst.exec_id] = {
                "inputs": inputs,
                "class_type": inst.type,
                "_meta": {"title": title},
            }
        for node in prompt.values():  # links to nodes not sent (muted) are dropped
            for name, value in list(node["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in prompt:
                    del node["inputs"][name]
        if not prompt:
            raise WorkflowInvalid(
                "The workflow has no node to run (all muted, bypassed or frontend-only)."
            )
        return Converted(prompt, self.warnings)

    def _is_sent(self, inst: _Inst) -> bool:
        return (
            inst.mode not in (MUTED, BYPASSED)
            and inst.type not in VIRTUAL_TYPES
            and inst.type not in self.subgraphs
            and not self._inside_disabled(inst)
        )

    @staticmethod
    def _inside_disabled(inst: _Inst) -> bool:
        """Nodes inside a muted or bypassed subgraph instance do not run either."""
        container = inst.container
        while container is not None:
            if container.mode in (MUTED, BYPASSED):
                return True
            container = container.container
        return False


def _parse_link(raw: Any) -> tuple[Any, _Link] | None:
    """A link as saved: ``[id, origin, origin_slot, target, target_slot, type]`` at the top
    level, ``{id, origin_id, ...}`` in subgraphs and newer saves."""
    try:
        if isinstance(raw, list) and len(raw) >= 5:
            return raw[0], _Link(raw[1], int(raw[2]), raw[3], int(raw[4]))
        if isinstance(raw, dict):
            return raw["id"], _Link(
                raw["origin_id"], int(raw["origin_slot"]), raw["target_id"], int(raw["target_slot"])
            )
    except (KeyError, TypeError, ValueError):
        pass
    raise WorkflowInvalid(f"The workflow has a malformed link: {str(raw)[:80]}.")


def _wrap(value: Any) -> Any:
    """A list value would read as a link: the frontend boxes it as ``{"__value__": [...]}``."""
    return {"__value__": value} if isinstance(value, list) else value


def to_api(
    workflow: dict[str, Any], node_info: NodeInfo, server: str = "The server", strict: bool = True
) -> Converted:
    """The API prompt the web UI would queue for ``workflow`` on a server whose
    ``/object_info`` entries ``node_info`` returns (``server`` names it in errors).
    Not ``strict``: a node type the server lacks is kept with its links only (for a check
    that reports it with everything else) instead of failing the conversion."""
    return _Converter(workflow, node_info, server, strict).convert(workflow)


def node_types(workflow: dict[str, Any]) -> set[str]:
    """Every node class a UI workflow uses (subgraphs included), frontend-only ones and
    subgraph instances left out: what the server must have."""
    definitions = workflow.get("definitions") or {}
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
    graphs = [workflow, *(s for s in subgraphs or [] if isinstance(s, dict))]
    ids = {str(s.get("id")) for s in graphs[1:]}
    types = set()
    for graph in graphs:
        for node in graph.get("nodes") or []:
            if isinstance(node, dict) and isinstance(node.get("type"), str):
                types.add(node["type"])
    return types - VIRTUAL_TYPES - ids
