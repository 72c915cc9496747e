"""UI-format workflows (as the web UI saves them) to API prompts, as the frontend's
graphToPrompt makes them. Most inputs are real files saved by the ComfyUI frontend
(tests/data/ui-workflows, see its README); the node specs are a server's /object_info."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from comfyctl.errors import WorkflowInvalid
from comfyctl.uiworkflow import to_api, widget_layout

FIXTURES = Path(__file__).parent / "data" / "ui-workflows"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    from comfyctl.emulator import Emulator

    with Emulator() as emu:
        return requests.get(emu.url + "/object_info", timeout=10).json()


def test_default_workflow_converts_as_the_web_ui_queues_it(object_info) -> None:
    converted = to_api(load("default"), object_info.get)
    assert converted.prompt == {
        "3": {"class_type": "KSampler", "_meta": {"title": "KSampler"}, "inputs": {
            # widgets_values [seed, <control_after_generate>, steps, cfg, sampler, scheduler,
            # denoise]: the control value is saved but never sent.
            "seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"},
              "inputs": {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image"},
              "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Prompt)"},
              "inputs": {"text": "beautiful scenery nature glass bottle landscape, , purple "
                                 "galaxy bottle,", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Prompt)"},
              "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "_meta": {"title": "VAE Decode"},
              "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        # Saved without widgets_values: the widget's default, as in the web UI.
        "9": {"class_type": "SaveImage", "_meta": {"title": "Save Image"},
              "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }
    assert converted.warnings == []


def test_upload_button_and_control_values_are_not_sent(object_info) -> None:
    prompt = to_api(load("load_image_with_ksampler"), object_info.get).prompt
    assert prompt["1"]["inputs"] == {"image": "example.png"}  # not the "image" button value
    assert prompt["2"]["inputs"] == {"seed": 0, "steps": 20, "cfg": 8, "sampler_name": "euler",
                                     "scheduler": "normal", "denoise": 1}


def test_widget_layout_follows_input_order(object_info) -> None:
    layout = [(name, kind) for name, kind, _ in widget_layout(object_info["KSampler"])]
    assert layout == [("seed", "value"), ("seed", "control"), ("steps", "value"),
                      ("cfg", "value"), ("sampler_name", "value"), ("scheduler", "value"),
                      ("denoise", "value")]
    # SlowProgress' optional seed has no control_after_generate flag: named seed, it gets one.
    slow = [(n, k) for n, k, _ in widget_layout(object_info["SlowProgress"])]
    assert ("seed", "control") in slow and slow.index(("seed", "control")) == \
        slow.index(("seed", "value")) + 1


def test_older_saves_without_the_control_value(object_info) -> None:
    workflow = load("load_image_with_ksampler")
    workflow["nodes"][1]["widgets_values"] = [7, 20, 8, "euler", "normal", 1]
    assert to_api(workflow, object_info.get).prompt["2"]["inputs"]["seed"] == 7


def test_subgraph_nodes_get_path_ids(object_info) -> None:
    prompt = to_api(load("basic-subgraph-zero-uuid"), object_info.get).prompt
    assert set(prompt) == {"2:1", "2:2"}  # the instance itself is not sent
    assert prompt["2:1"]["class_type"] == "KSampler"
    # The subgraph input is not connected outside, so the inner input stays unset.
    assert "positive" not in prompt["2:1"]["inputs"]
    assert prompt["2:1"]["inputs"]["scheduler"] == "simple"


def test_nested_subgraphs_link_through_both_levels(object_info) -> None:
    info = dict(object_info)
    for name in ("TestSleep", "TestAsyncProgressNode"):
        info[name] = {"input": {"required": {"value": ["*", {}]}}, "input_order":
                      {"required": ["value"]}, "output": ["*"], "display_name": name}
    info["TestSleep"]["input"]["required"]["seconds"] = ["FLOAT", {"default": 1.0}]
    info["TestSleep"]["input_order"]["required"].append("seconds")
    prompt = to_api(load("nested-subgraph-test"), info.get).prompt
    assert set(prompt) == {"1", "10:3", "10:5:6", "10:5:7", "11"}
    assert prompt["10:3"]["inputs"] == {"value": ["1", 0], "seconds": 2.0}
    assert prompt["10:5:6"]["inputs"]["value"] == ["10:3", 0]
    assert prompt["10:5:7"]["inputs"] == {"value": ["10:5:6", 0]}
    assert prompt["11"]["inputs"] == {"filename_prefix": "ComfyUI", "images": ["10:5:7", 0]}


def test_unknown_node_type_names_every_node(object_info) -> None:
    with pytest.raises(WorkflowInvalid) as caught:
        to_api(load("nested-subgraph-test"), object_info.get, "Server gpu1")
    message = caught.value.message
    assert message.startswith("Server gpu1 has no node type")
    assert "TestSleep (nodes 10:3, 10:5:6)" in message
    assert "TestAsyncProgressNode (node 10:5:7)" in message


def test_primitive_node_feeds_a_converted_widget(object_info) -> None:
    workflow = load("old_workflow_converted_input")
    with pytest.raises(WorkflowInvalid, match="ControlNetApplyAdvanced \\(node 1\\)"):
        to_api(workflow, object_info.get)
    info = dict(object_info)
    info["ControlNetApplyAdvanced"] = {
        "input": {"required": {
            "positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
            "control_net": ["CONTROL_NET"], "image": ["IMAGE"],
            "strength": ["FLOAT", {"default": 1.0}], "start_percent": ["FLOAT", {"default": 0}],
            "end_percent": ["FLOAT", {"default": 1.0}]}},
        "input_order": {"required": ["positive", "negative", "control_net", "image",
                                     "strength", "start_percent", "end_percent"]},
        "output": ["CONDITIONING", "CONDITIONING"], "display_name": "Apply ControlNet"}
    workflow["nodes"][1]["widgets_values"] = [0.6, "fixed"]  # the primitive's value wins
    prompt = to_api(workflow, info.get).prompt
    assert set(prompt) == {"1"}  # the PrimitiveNode is frontend-only
    assert prompt["1"]["inputs"] == {"strength": 0.6, "start_percent": 0, "end_percent": 1}


def test_only_bypassed_nodes_is_nothing_to_run(object_info) -> None:
    with pytest.raises(WorkflowInvalid, match="no node to run"):
        to_api(load("missing_media_bypassed"), object_info.get)


def node(id_: int, type_: str, inputs: list | None = None, outputs: list | None = None,
         values: Any = None, mode: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"id": id_, "type": type_, "mode": mode, "inputs": inputs or [],
                            "outputs": outputs or [], "properties": {}}
    if values is not None:
        body["widgets_values"] = values
    return body


def image_in(link: int | None, name: str = "image") -> dict[str, Any]:
    return {"name": name, "type": "IMAGE", "link": link}


def image_out(*links: int) -> dict[str, Any]:
    return {"name": "IMAGE", "type": "IMAGE", "links": list(links)}


def routed_workflow() -> dict[str, Any]:
    """EmptyImage -> Reroute -> SlowProgress (bypassed) -> SaveImage; a muted
    PreviewImage; a SaveImage fed by a muted EmptyImage; notes and a group."""
    return {
        "last_node_id": 9, "last_link_id": 7, "version": 0.4,
        "nodes": [
            node(1, "EmptyImage", outputs=[image_out(1, 5)], values=[64, 32, 1, 255]),
            node(2, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}],
                 outputs=[{"name": "", "type": "IMAGE", "links": [2]}]),
            node(3, "SlowProgress", inputs=[image_in(2)], outputs=[image_out(3)],
                 values=[10, 0.3, 0, 86400, True, 0, "randomize", False], mode=4),
            node(4, "SaveImage", inputs=[image_in(3, "images")], values=["kept"]),
            node(5, "PreviewImage", inputs=[image_in(5, "images")], mode=2),
            node(6, "SaveImage", inputs=[image_in(6, "images")], values={"filename_prefix":
                                                                         "named"}),
            node(7, "EmptyImage", outputs=[image_out(6)], values=[8, 8, 1, 0], mode=2),
            node(8, "Note", values=["remember the milk"]),
            node(9, "MarkdownNote", values=["# hi"]),
        ],
        "links": [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"],
                  [5, 1, 0, 5, 0, "IMAGE"], [6, 7, 0, 6, 0, "IMAGE"]],
        "groups": [{"title": "Group", "bounding": [0, 0, 100, 100]}],
    }


def test_reroute_bypass_mute_and_notes(object_info) -> None:
    prompt = to_api(routed_workflow(), object_info.get).prompt
    assert set(prompt) == {"1", "4", "6"}
    assert prompt["1"]["inputs"] == {"width": 64, "height": 32, "batch_size": 1, "color": 255}
    # Through the Reroute and the bypassed SlowProgress, straight to the EmptyImage.
    assert prompt["4"]["inputs"] == {"filename_prefix": "kept", "images": ["1", 0]}
    # Linked from a muted node: the link is dropped (the server then reports the input).
    assert prompt["6"]["inputs"] == {"filename_prefix": "named"}


def test_list_values_are_boxed(object_info) -> None:
    workflow = routed_workflow()
    workflow["nodes"][3]["widgets_values"] = [["a", "b"]]
    assert to_api(workflow, object_info.get).prompt["4"]["inputs"]["filename_prefix"] == \
        {"__value__": ["a", "b"]}


def test_values_that_do_not_fit_the_servers_widgets_warn(object_info) -> None:
    workflow = routed_workflow()
    workflow["nodes"][3]["widgets_values"] = ["kept", "surplus", "values"]
    converted = to_api(workflow, object_info.get)
    assert converted.prompt["4"]["inputs"]["filename_prefix"] == "kept"
    (warning,) = converted.warnings
    assert warning.startswith("node 4 (SaveImage): 3 saved widget values for 1 widgets")


@pytest.mark.parametrize("change, message", [
    (lambda w: w["links"].append([9, 1, 0]), "malformed link"),
    (lambda w: w["nodes"][3]["inputs"][0].update(link=42), "link 42"),
    (lambda w: w["links"].__setitem__(2, [3, 99, 0, 4, 0, "IMAGE"]), "node 99"),
    (lambda w: w.update(extra={"groupNodes": {"x": {}}}), "group nodes"),
])
def test_broken_workflows_are_clear_errors(object_info, change, message) -> None:
    workflow = copy.deepcopy(routed_workflow())
    change(workflow)
    with pytest.raises(WorkflowInvalid, match=message):
        to_api(workflow, object_info.get)


def test_a_subgraph_inside_itself_is_refused(object_info) -> None:
    workflow = load("basic-subgraph-zero-uuid")
    inner = workflow["definitions"]["subgraphs"][0]
    inner["nodes"].append({"id": 3, "type": inner["id"], "mode": 0, "inputs": [],
                           "outputs": []})
    with pytest.raises(WorkflowInvalid, match="nest deeper"):
        to_api(workflow, object_info.get)
