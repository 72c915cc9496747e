"""Execution engine: the prompt queue, the executor that runs one prompt node by node, the
per-prompt progress registry and the context handed to running nodes.

Everything runs on the emulator's event loop (one worker task executes prompts one at a
time); nodes "work" with ``asyncio.sleep``. Messages are not sent from here directly but
handed to ``send(event, data, sid)``, which queues them for the server's publish loop, in
order, exactly like ComfyUI's ``send_sync``.

Behaviour follows ComfyUI 0.3.64 (``execution.py``, ``comfy_execution/progress.py`` and
``main.py``'s ``prompt_worker``/progress hook), including its classic cache: a node whose
input signature (class + constant inputs + signatures of linked nodes) was computed by the
previous prompt is "cached" and not run again.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import json
import os
import random
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyctl.emulator.faults import Faults
from comfyctl.emulator.images import encode_png, rgb_from_int
from comfyctl.emulator.nodes import CATALOGUE, Directories, Image, NodeSpec
from comfyctl.emulator.validation import full_type_name

#: Binary WebSocket event types (ComfyUI ``protocol.BinaryEventTypes``).
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4

MAXIMUM_HISTORY_SIZE = 10000

#: Largest side written to disk; the emulator's images are solid colours anyway.
MAX_SAVED_SIDE = 2048

Send = Callable[[Any, Any, "str | None"], None]
QueueItem = tuple[Any, str, Any, dict[str, Any], list[Any]]


class InterruptProcessing(Exception):
    """The running prompt was interrupted (ComfyUI's ``InterruptProcessingException``)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
    )


# --------------------------------------------------------------------------- queue


@dataclass(order=True)
class _Pending:
    number: Any
    prompt_id: str
    seq: int
    item: QueueItem = field(compare=False)


class PromptQueue:
    """Pending heap (by ``number``), running items and in-memory history."""

    def __init__(self, on_update: Callable[[], None]) -> None:
        self._on_update = on_update
        self._heap: list[_Pending] = []
        self._seq = 0
        self._task_counter = 0
        self._not_empty = asyncio.Event()
        self.running: dict[int, QueueItem] = {}
        self.history: dict[str, dict[str, Any]] = {}

    def put(self, item: QueueItem) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Pending(item[0], item[1], self._seq, item))
        self._on_update()
        self._not_empty.set()

    async def get(self) -> tuple[QueueItem, int]:
        while not self._heap:
            self._not_empty.clear()
            await self._not_empty.wait()
        item = heapq.heappop(self._heap).item
        task_id = self._task_counter
        self._task_counter += 1
        self.running[task_id] = copy.deepcopy(item)
        self._on_update()
        return item, task_id

    def task_done(
        self, task_id: int, history_result: dict[str, Any], status: dict[str, Any]
    ) -> None:
        prompt = self.running.pop(task_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        entry: dict[str, Any] = {
            "prompt": list(prompt),
            "outputs": {},
            "status": copy.deepcopy(status),
        }
        entry.update(history_result)
        # Re-assigning an existing key keeps its place: a prompt_id submitted twice keeps
        # one entry (the later run) at the position of the first, as in ComfyUI.
        self.history[prompt[1]] = entry
        self._on_update()

    def current(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """(running, pending); pending in heap order, not sorted (like ComfyUI)."""
        return list(self.running.values()), [p.item for p in self._heap]

    def remaining(self) -> int:
        return len(self._heap) + len(self.running)

    def is_empty(self) -> bool:
        return not self._heap and not self.running

    def wipe_queue(self) -> None:
        self._heap = []
        self._on_update()

    def delete(self, predicate: Callable[[QueueItem], bool]) -> bool:
        for index, pending in enumerate(self._heap):
            if predicate(pending.item):
                if len(self._heap) == 1:
                    self.wipe_queue()
                else:
                    self._heap.pop(index)
                    heapq.heapify(self._heap)
                self._on_update()
                return True
        return False

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        if prompt_id is not None:
            if prompt_id in self.history:
                return {prompt_id: copy.deepcopy(self.history[prompt_id])}
            return {}
        out: dict[str, Any] = {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        for index, key in enumerate(self.history):
            if index >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    def wipe_history(self) -> None:
        self.history = {}

    def delete_history_item(self, prompt_id: Any) -> None:
        self.history.pop(prompt_id, None)


# --------------------------------------------------------------------------- progress


class ProgressRegistry:
    """Per-prompt node states, sent as ``progress_state`` after every change."""

    def __init__(self, prompt_id: str, emit: Callable[[dict[str, Any]], None]) -> None:
        self.prompt_id = prompt_id
        self.nodes: dict[str, dict[str, Any]] = {}
        self._emit = emit

    def _entry(self, node_id: str) -> dict[str, Any]:
        return self.nodes.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})

    def start(self, node_id: str) -> None:
        self._entry(node_id).update(state="running", value=0.0, max=1.0)
        self._emit(self.snapshot())

    def update(self, node_id: str, value: float, max_value: float) -> None:
        self._entry(node_id).update(state="running", value=value, max=max_value)
        self._emit(self.snapshot())

    def finish(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry["state"] = "finished"
        entry["value"] = entry["max"]
        self._emit(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        nodes = {
            node_id: {
                "value": entry["value"],
                "max": entry["max"],
                "state": entry["state"],
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, entry in self.nodes.items()
            if entry["state"] != "pending"
        }
        return {"prompt_id": self.prompt_id, "nodes": nodes}


# --------------------------------------------------------------------------- executor


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


class _NodeFailure(Exception):
    def __init__(self, node_id: str, error: BaseException, inputs: dict[str, Any] | None):
        super().__init__(str(error))
        self.node_id = node_id
        self.error = error
        self.inputs = inputs


def _format_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


class Executor:
    """Runs one prompt at a time and keeps the state ComfyUI keeps between prompts:
    the output cache, ``client_id`` of the last prompt and the last executing node."""

    def __init__(
        self,
        *,
        send: Send,
        faults: Faults,
        dirs: Directories,
        supports_preview_metadata: Callable[[str | None], bool],
        catalogue: dict[str, NodeSpec] | None = None,
    ) -> None:
        self.send = send
        self.faults = faults
        self.dirs = dirs
        self.supports_preview_metadata = supports_preview_metadata
        self.catalogue = CATALOGUE if catalogue is None else catalogue
        self.cache: dict[str, CacheEntry] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.interrupted = False
        self.success = True
        self.status_messages: list[tuple[str, dict[str, Any]]] = []
        self.history_result: dict[str, Any] = {"outputs": {}, "meta": {}}

    # -- interruption ------------------------------------------------------------------

    def interrupt(self) -> None:
        self.interrupted = True

    def check_interrupt(self) -> None:
        if self.interrupted:
            self.interrupted = False
            raise InterruptProcessing()

    # -- messages ------------------------------------------------------------------------

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.status_messages.append((event, data))
        if self.client_id is not None or broadcast:
            self.send(event, data, self.client_id)

    def _send_progress_state(self, snapshot: dict[str, Any]) -> None:
        self.send("progress_state", snapshot, self.client_id)

    def progress_hook(
        self,
        prompt_id: str,
        node_id: str,
        progress: ProgressRegistry,
        value: float,
        total: float,
        preview: bytes | None,
    ) -> None:
        """What ComfyUI's global progress-bar hook does at every progress report."""
        self.check_interrupt()
        progress.update(node_id, value, total)
        client_id = self.client_id
        with_metadata = self.supports_preview_metadata(client_id)
        if preview is not None and with_metadata:
            metadata = {
                "node_id": node_id,
                "prompt_id": prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            self.send(PREVIEW_IMAGE_WITH_METADATA, (preview, metadata), client_id)
        self.send(
            "progress",
            {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id},
            client_id,
        )
        if preview is not None and not with_metadata:
            self.send(PREVIEW_IMAGE, preview, client_id)

    # -- cache ---------------------------------------------------------------------------

    @staticmethod
    def signatures(prompt: dict[str, Any]) -> dict[str, str]:
        memo: dict[str, str] = {}

        def signature(node_id: str, stack: set[str]) -> str:
            if node_id in memo:
                return memo[node_id]
            if node_id in stack or node_id not in prompt:
                return json.dumps(["unresolved", node_id])
            node = prompt[node_id]
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if not isinstance(inputs, dict):
                inputs = {}
            stack.add(node_id)
            parts: list[Any] = [node.get("class_type") if isinstance(node, dict) else None]
            for name in sorted(inputs):
                value = inputs[name]
                if is_link(value):
                    parts.append([name, "link", signature(value[0], stack), value[1]])
                else:
                    parts.append([name, "value", value])
            stack.discard(node_id)
            memo[node_id] = json.dumps(parts, sort_keys=True, default=str)
            return memo[node_id]

        return {node_id: signature(node_id, set()) for node_id in prompt}

    def _plan(self, prompt: dict[str, Any], outputs: list[str], cached: set[str]) -> list[str]:
        """Nodes to stage, dependencies first: output nodes plus every uncached node they
        need (a cached node's inputs are not needed)."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in seen:
                return
            seen.add(node_id)
            if node_id not in cached:
                for value in prompt[node_id]["inputs"].values():
                    if is_link(value) and value[0] not in cached and value[0] in prompt:
                        visit(value[0])
            order.append(node_id)

        for output in outputs:
            visit(output)
        return order

    # -- one prompt ----------------------------------------------------------------------

    async def execute(
        self,
        prompt: dict[str, Any],
        prompt_id: str,
        extra_data: dict[str, Any],
        execute_outputs: list[str],
    ) -> None:
        self.interrupted = False
        self.client_id = extra_data.get("client_id")
        self.status_messages = []
        self.success = True
        self.add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)

        signatures = self.signatures(prompt)
        live = set(signatures.values())
        self.cache = {key: entry for key, entry in self.cache.items() if key in live}
        cached = {node_id for node_id, sig in signatures.items() if sig in self.cache}
        self.add_message(
            "execution_cached",
            {"nodes": [node_id for node_id in prompt if node_id in cached], "prompt_id": prompt_id},
            broadcast=False,
        )
        progress = ProgressRegistry(prompt_id, self._send_progress_state)
        executed: dict[str, None] = {}
        values: dict[str, tuple[Any, ...]] = {}
        try:
            for node_id in self._plan(prompt, execute_outputs, cached):
                await self._execute_node(
                    prompt, prompt_id, extra_data, node_id, signatures, values, executed, progress
                )
        except _NodeFailure as failure:
            self.success = False
            self._report_failure(prompt, prompt_id, failure, list(executed))
        else:
            self.add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)

        outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for node_id, sig in signatures.items():
            entry = self.cache.get(sig)
            if entry is not None and entry.ui is not None:
                outputs[node_id] = entry.ui["output"]
                meta[node_id] = entry.ui["meta"]
        self.history_result = {"outputs": outputs, "meta": meta}
        self.last_node_id = None

    async def _execute_node(
        self,
        prompt: dict[str, Any],
        prompt_id: str,
        extra_data: dict[str, Any],
        node_id: str,
        signatures: dict[str, str],
        values: dict[str, tuple[Any, ...]],
        executed: dict[str, None],
        progress: ProgressRegistry,
    ) -> None:
        node = prompt[node_id]
        spec = self.catalogue[node["class_type"]]
        signature = signatures[node_id]
        cached = self.cache.get(signature)
        if cached is not None:
            if self.client_id is not None:
                output = cached.ui["output"] if cached.ui is not None else None
                self.send(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": output,
                        "prompt_id": prompt_id,
                    },
                    self.client_id,
                )
            progress.finish(node_id)
            values[node_id] = cached.outputs
            return

        inputs: dict[str, Any] | None = None
        try:
            progress.start(node_id)
            inputs = self._input_data(prompt, node, spec, signatures, values, extra_data)
            if self.client_id is not None:
                self.last_node_id = node_id
                self.send(
                    "executing",
                    {"node": node_id, "display_node": node_id, "prompt_id": prompt_id},
                    self.client_id,
                )
            self.check_interrupt()
            fault_node = self.faults.error_at_node
            if fault_node is not None and str(fault_node) == node_id:
                raise RuntimeError(f"Emulated fault: error while executing node {node_id}")
            context = NodeContextImpl(self, prompt, prompt_id, extra_data, node_id, progress)
            outputs, ui = await spec.run(context, inputs)
        except Exception as ex:
            raise _NodeFailure(node_id, ex, inputs) from ex

        ui_entry = None
        if ui:
            meta = {
                "node_id": node_id,
                "display_node": node_id,
                "parent_node": None,
                "real_node_id": node_id,
            }
            ui_entry = {"meta": meta, "output": ui}
            if self.client_id is not None:
                self.send(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": ui,
                        "prompt_id": prompt_id,
                    },
                    self.client_id,
                )
        self.cache[signature] = CacheEntry(outputs, ui_entry)
        values[node_id] = outputs
        progress.finish(node_id)
        executed[node_id] = None

    def _input_data(
        self,
        prompt: dict[str, Any],
        node: dict[str, Any],
        spec: NodeSpec,
        signatures: dict[str, str],
        values: dict[str, tuple[Any, ...]],
        extra_data: dict[str, Any],
    ) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, value in node["inputs"].items():
            if is_link(value):
                source = values.get(value[0])
                if source is None and value[0] in signatures:
                    entry = self.cache.get(signatures[value[0]])
                    source = entry.outputs if entry is not None else None
                index = int(value[1])
                data[name] = source[index] if source is not None and index < len(source) else None
            elif spec.input_spec(name) is not None:
                data[name] = value
        for name, kind in spec.hidden.items():
            if kind == "PROMPT":
                data[name] = prompt
            elif kind == "EXTRA_PNGINFO":
                data[name] = extra_data.get("extra_pnginfo")
        return data

    def _report_failure(
        self, prompt: dict[str, Any], prompt_id: str, failure: _NodeFailure, executed: list[str]
    ) -> None:
        node_id = failure.node_id
        message: dict[str, Any] = {
            "prompt_id": prompt_id,
            "node_id": node_id,
            "node_type": prompt[node_id]["class_type"],
            "executed": executed,
        }
        if isinstance(failure.error, InterruptProcessing):
            self.add_message("execution_interrupted", message, broadcast=True)
            return
        error = failure.error
        message.update(
            exception_message=f"{error}\n",
            exception_type=full_type_name(type(error)),
            traceback=traceback.format_tb(error.__traceback__),
            current_inputs={
                name: [_format_value(value)] for name, value in (failure.inputs or {}).items()
            },
            current_outputs=list(prompt),
        )
        self.add_message("execution_error", message, broadcast=False)


# --------------------------------------------------------------------------- node context

_TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"


def _compute_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    replacements = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02}",
        "%day%": f"{now.tm_mday:02}",
        "%hour%": f"{now.tm_hour:02}",
        "%minute%": f"{now.tm_min:02}",
        "%second%": f"{now.tm_sec:02}",
    }
    for key, value in replacements.items():
        prefix = prefix.replace(key, value)
    return prefix


def save_image_path(
    filename_prefix: str, base_dir: Path, width: int, height: int
) -> tuple[Path, str, int, str]:
    """(folder, file name stem, next counter, subfolder) like ComfyUI's
    ``folder_paths.get_save_image_path``: ``{stem}_{counter:05}_.png``, counter one past
    the highest already in the folder, subfolders allowed but never outside ``base_dir``."""
    base = os.path.abspath(base_dir)
    if "%" in filename_prefix:
        filename_prefix = _compute_vars(filename_prefix, width, height)
    normalized = os.path.normpath(filename_prefix)
    subfolder = os.path.dirname(normalized)
    stem = os.path.basename(normalized)
    folder = os.path.abspath(os.path.join(base, subfolder))
    if os.path.commonpath((base, folder)) != base:
        raise ValueError(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {folder}\n         output_dir: {base}"
        )
    counter = 1
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        names = []
    pattern = re.compile(re.escape(stem) + r"_(\d+)_")
    for name in names:
        match = pattern.match(name)
        if match:
            counter = max(counter, int(match.group(1)) + 1)
    return Path(folder), stem, counter, subfolder


class NodeContextImpl:
    """What a running node sees (see :class:`comfyctl.emulator.nodes.NodeContext`)."""

    def __init__(
        self,
        executor: Executor,
        prompt: dict[str, Any],
        prompt_id: str,
        extra_data: dict[str, Any],
        node_id: str,
        progress: ProgressRegistry,
    ) -> None:
        self._executor = executor
        self._prompt = prompt
        self._prompt_id = prompt_id
        self._extra_data = extra_data
        self._progress = progress
        self.node_id = node_id
        self.dirs = executor.dirs

    @property
    def _faults(self) -> Faults:
        return self._executor.faults

    def steps(self, steps: int) -> int:
        override = self._faults.steps
        return int(override) if override is not None else int(steps)

    def seconds_per_step(self, seconds: float) -> float:
        override = self._faults.seconds_per_step
        return float(override) if override is not None else float(seconds)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def stall(self, seconds: float, interruptible: bool) -> None:
        if not interruptible:
            # Like a plain time.sleep in a node: an interrupt is only noticed at the next
            # progress report.
            await asyncio.sleep(max(0.0, seconds))
            return
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            self._executor.check_interrupt()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(0.02, remaining))

    async def progress(self, value: int, total: int, preview: bytes | None = None) -> None:
        self._executor.progress_hook(
            self._prompt_id, self.node_id, self._progress, value, total, preview
        )
        while True:
            percent = self._faults.stall_at_percent
            if percent is None or total <= 0 or value * 100 < percent * total:
                return
            self._executor.check_interrupt()
            await asyncio.sleep(0.02)

    def save_images(self, image: Image, filename_prefix: str, kind: str) -> list[dict[str, str]]:
        dirs = self._executor.dirs
        if kind == "output":
            base, compress = dirs.output, 4
        else:
            suffix = "".join(random.choice(_TEMP_LETTERS) for _ in range(5))
            base, compress = dirs.temp, 1
            filename_prefix = f"{filename_prefix}_temp_{suffix}"
        if not isinstance(image, Image):
            raise TypeError(f"expected an IMAGE, got {type(image).__name__}")
        folder, stem, counter, subfolder = save_image_path(
            str(filename_prefix), base, image.width, image.height
        )
        text = {"prompt": json.dumps(self._prompt)}
        extra_pnginfo = self._extra_data.get("extra_pnginfo")
        if isinstance(extra_pnginfo, dict):
            text.update({key: json.dumps(value) for key, value in extra_pnginfo.items()})
        data = encode_png(
            max(1, min(image.width, MAX_SAVED_SIDE)),
            max(1, min(image.height, MAX_SAVED_SIDE)),
            rgb_from_int(image.color),
            text=text,
            compress_level=compress,
        )
        results = []
        for batch_number in range(max(1, image.batch)):
            name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            (folder / name).write_bytes(data)
            results.append({"filename": name, "subfolder": subfolder, "type": kind})
            counter += 1
        faults = self._faults
        for result in results:
            if faults.output_filename is not None:
                result["filename"] = faults.output_filename
            if faults.output_subfolder is not None:
                result["subfolder"] = faults.output_subfolder
        return results
