"""Every workflow template the ComfyUI frontend saved (the comfyui-workflow-templates-json
package, test extra) against the emulator: converting one gives an API prompt or a clear
error naming what the server lacks, never another exception; and the emulator accepts
every prompt converted from a template whose nodes it has all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from workflows import template, template_names

from comfyctl.emulator import Emulator
from comfyctl.emulator.images import encode_png
from comfyctl.emulator.nodes import CATALOGUE, FolderFiles
from comfyctl.errors import WorkflowInvalid
from comfyctl.uiworkflow import is_ui_workflow, to_api

NAMES = template_names()

#: Templates whose every node the emulator has (it runs them too): a node type dropped from
#: the catalogue, or a converter change that loses one of these, shows here.
RUNNABLE = {
    "flux1_krea_dev", "flux_dev_checkpoint_example", "flux_dev_full_text_to_image",
    "flux_schnell", "image_anima_preview", "image_qwen_image_2512_with_2steps_lora",
    "image_sdxl_simple", "image_z_image_turbo", "image_z_image_turbo_int8",
    "sd3.5_simple_example", "sdxl_refiner_prompt_example", "sdxl_simple_example",
    "template_qwen_image_illustration_lora",
}  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Any:
    with Emulator() as emu:
        emu.faults.seconds_per_step = 0.001
        info = requests.get(emu.url + "/object_info", timeout=10).json()
        yield emu, info


def provide_files(emu: Emulator, prompt: dict[str, Any]) -> None:
    """The model and input files a converted prompt names, where the emulator's node takes
    them from (its folder combos): the templates name real models nobody has here."""
    for node in prompt.values():
        spec = CATALOGUE[node["class_type"]]
        declared = {**spec.required, **spec.optional}
        for name, value in node["inputs"].items():
            first = declared.get(name, [None])[0]
            if not isinstance(first, FolderFiles) or not isinstance(value, str):
                continue
            if first.folder == "input":
                (emu.input_dir / value).write_bytes(encode_png(2, 2, (9, 9, 9)))
            else:
                path: Path = emu.models_dir / first.folder / value
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()


def test_vae_loader_lists_its_folder_then_pixel_space(server) -> None:
    emu, _ = server
    (emu.models_dir / "vae").mkdir(exist_ok=True)
    (emu.models_dir / "vae" / "ae.safetensors").touch()
    info = requests.get(emu.url + "/object_info/VAELoader", timeout=10).json()
    options = info["VAELoader"]["input"]["required"]["vae_name"][0]
    assert options[-1] == "pixel_space" and "ae.safetensors" in options


def test_the_package_holds_the_templates() -> None:
    # A broken install (no templates found) must not pass as "nothing failed" below.
    assert len(NAMES) > 500
    assert "image_sdxl_simple" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_template_converts_or_names_what_is_missing(server, name) -> None:
    emu, info = server
    workflow = template(name)
    assert is_ui_workflow(workflow)
    try:
        converted = to_api(workflow, info.get, "Server emu")
    except WorkflowInvalid as error:
        assert name not in RUNNABLE, error.message
        # The one refusal a real, frontend-saved template may get here: node types the
        # emulator does not have, each named with its nodes.
        assert error.message.startswith("Server emu has no node type"), error.message
        return
    assert converted.prompt
    for node in converted.prompt.values():
        assert node["class_type"] in info
    provide_files(emu, converted.prompt)
    response = requests.post(emu.url + "/prompt", json={"prompt": converted.prompt}, timeout=10)
    if response.status_code == 400:
        # A template newer than the server may pick an option (a CLIPLoader type) that
        # ComfyUI 0.3.64 does not list: refused as value_not_in_list on a fixed list, the
        # one refusal allowed (model and input files are provided above).
        for key, errors in response.json()["node_errors"].items():
            spec = CATALOGUE[converted.prompt[key]["class_type"]]
            for error in errors["errors"]:
                assert error["type"] == "value_not_in_list", error
                kind = spec.input_spec(error["extra_info"]["input_name"])
                assert kind is not None and isinstance(kind[0], list), error
        return
    assert response.status_code == 200, response.text
    assert name in RUNNABLE  # a new one: add it above


def stand_ins(workflow: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """/object_info entries for the node types the emulator lacks, declaring the linked
    inputs and the outputs each node was saved with (no widgets: their saved values are
    then surplus, a warning)."""
    graphs = [workflow, *workflow.get("definitions", {}).get("subgraphs", [])]
    subgraphs = {graph.get("id") for graph in graphs[1:]}
    specs: dict[str, Any] = {}
    for graph in graphs:
        for node in graph["nodes"]:
            kind = node["type"]
            if kind in info or kind in subgraphs or kind in specs:
                continue
            linked = [i for i in node.get("inputs") or [] if not i.get("widget")]
            specs[kind] = {
                "input": {"required": {i["name"]: [i.get("type", "*")] for i in linked}},
                "input_order": {"required": [i["name"] for i in linked]},
                "output": [o.get("type", "*") for o in node.get("outputs") or []],
                "display_name": kind,
            }
    return specs


@pytest.mark.parametrize("name", NAMES)
def test_template_converts_with_every_node_type_known(server, name) -> None:
    # The converter's own logic (subgraphs, primitives, reroutes, bypass) on every
    # template, with the emulator's specs and stand-ins for the node types it lacks.
    _, info = server
    workflow = template(name)
    full = {**info, **stand_ins(workflow, info)}
    converted = to_api(workflow, full.get)
    for key, node in converted.prompt.items():
        assert node["class_type"] in full, key
        for value in node["inputs"].values():
            if isinstance(value, list):  # a link: to a node that is sent
                assert value[0] in converted.prompt, (key, value)
