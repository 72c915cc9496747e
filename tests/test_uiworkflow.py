"""UI-format workflows (as the web UI saves them) to API prompts, as the frontend's
graphToPrompt makes them. Most inputs are real workflows saved by the ComfyUI frontend: the
templates of the comfyui-workflow-templates-json package (test extra); the node specs are a
server's /object_info, plus specs written here for core nodes the emulator lacks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import requests
from workflows import node_spec, template

from comfyctl.errors import WorkflowInvalid
from comfyctl.uiworkflow import to_api, widget_layout


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    from comfyctl.emulator import Emulator

    with Emulator() as emu:
        return requests.get(emu.url + "/object_info", timeout=10).json()


def test_default_workflow_converts_as_the_web_ui_queues_it(object_info) -> None:
    converted = to_api(template("image_sdxl_simple"), object_info.get)
    assert converted.prompt == {
        "12": {
            "class_type": "KSampler",
            "_meta": {"title": "KSampler"},
            "inputs": {
                # widgets_values [seed, <control_after_generate>, steps, cfg, sampler, scheduler,
                # denoise]: the control value is saved but never sent.
                "seed": 812045847300606,
                "steps": 25,
                "cfg": 7,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "denoise": 1,
                "model": ["15", 0],
                "positive": ["10", 0],
                "negative": ["11", 0],
                "latent_image": ["13", 0],
            },
        },
        "15": {
            "class_type": "CheckpointLoaderSimple",
            "_meta": {"title": "Load Checkpoint"},
            "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"},
        },
        # A node's own title wins over the display name.
        "13": {
            "class_type": "EmptyLatentImage",
            "_meta": {"title": "Empty Latent"},
            "inputs": {"width": 1024, "height": 1024, "batch_size": 1},
        },
        "10": {
            "class_type": "CLIPTextEncode",
            "_meta": {"title": "Positive Prompt"},
            "inputs": {
                "text": "a giant classical marble statue standing alone in a pure "
                "white empty void, soft diffused lighting, subtle shadows, "
                "surreal, minimalist, fine art photography, quiet "
                "atmosphere, sense of scale",
                "clip": ["15", 1],
            },
        },
        "11": {
            "class_type": "CLIPTextEncode",
            "_meta": {"title": "Negative Prompt"},
            "inputs": {
                "text": "color, colored, lowres, blurry, out of focus, deformed, bad "
                "anatomy, extra limbs, mutated, watermark, text, logo, "
                "signature\n",
                "clip": ["15", 1],
            },
        },
        # Saved with widgets_values null: no widgets to send.
        "14": {
            "class_type": "VAEDecode",
            "_meta": {"title": "VAE Decode"},
            "inputs": {"samples": ["12", 0], "vae": ["15", 2]},
        },
        "7": {
            "class_type": "SaveImage",
            "_meta": {"title": "Save Image"},
            "inputs": {"filename_prefix": "sdxl_simple", "images": ["14", 0]},
        },
        # The MarkdownNote (16) is frontend-only.
    }
    assert converted.warnings == []


def test_upload_button_and_control_values_are_not_sent(object_info) -> None:
    info = dict(object_info)
    # Only the image input of the API node: its saved widgets are surplus here.
    info["FluxProExpandNode"] = node_spec(("image", "IMAGE", {}), output=("IMAGE",))
    converted = to_api(template("api_bfl_flux1_expand_image"), info.get)
    # widgets_values ["man_on_desert.png", "image"]: not the "image" upload button value.
    assert converted.prompt["17"]["inputs"] == {"image": "man_on_desert.png"}
    assert converted.prompt["7"]["inputs"] == {"image": ["17", 0]}
    assert converted.prompt["5"]["inputs"] == {"filename_prefix": "ComfyUI", "images": ["7", 0]}
    (warning,) = converted.warnings
    assert warning.startswith("node 7 (FluxProExpandNode): 10 saved widget values for 0")


def test_widget_layout_follows_input_order(object_info) -> None:
    layout = [(name, kind) for name, kind, _ in widget_layout(object_info["KSampler"])]
    assert layout == [
        ("seed", "value"),
        ("seed", "control"),
        ("steps", "value"),
        ("cfg", "value"),
        ("sampler_name", "value"),
        ("scheduler", "value"),
        ("denoise", "value"),
    ]
    # SlowProgress' optional seed has no control_after_generate flag: named seed, it gets one.
    slow = [(n, k) for n, k, _ in widget_layout(object_info["SlowProgress"])]
    assert ("seed", "control") in slow and slow.index(("seed", "control")) == slow.index(
        ("seed", "value")
    ) + 1


def test_older_saves_without_the_control_value(object_info) -> None:
    workflow = template("image_sdxl_simple")
    sampler = next(n for n in workflow["nodes"] if n["id"] == 12)
    sampler["widgets_values"] = [7, 20, 8, "euler", "normal", 1]
    inputs = to_api(workflow, object_info.get).prompt["12"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["denoise"]) == (7, 20, 1)


def lumina_info(object_info: dict[str, Any]) -> dict[str, Any]:
    """Specs (as ComfyUI declares them) of the core nodes image_netayume_lumina_t2i uses that
    the emulator lacks."""
    text = {"multiline": True}
    return {
        **object_info,
        "StringConcatenate": node_spec(
            ("string_a", "STRING", text),
            ("string_b", "STRING", text),
            ("delimiter", "STRING", {"default": ""}),
            output=("STRING",),
        ),
        "PrimitiveStringMultiline": node_spec(("value", "STRING", text), output=("STRING",)),
    }


def test_subgraph_nodes_get_path_ids(object_info) -> None:
    prompt = to_api(template("image_netayume_lumina_t2i"), lumina_info(object_info).get).prompt
    # The instance (48) and the inner instance (48:35) are not sent, their nodes are.
    assert set(prompt) == {
        "9",
        "48:31",
        "48:32",
        "48:33",
        "48:34",
        "48:36",
        "48:49",
        "48:50",
        "48:51",
        "48:52",
        "48:35:40",
        "48:35:41",
        "48:35:42",
        "48:35:43",
    }
    assert prompt["9"]["inputs"]["images"] == ["48:36", 0]
    # The subgraph's inputs are not connected on the instance (its widgets_values is
    # empty): the inner widgets keep their own saved values.
    assert prompt["48:31"]["inputs"] == {"width": 1024, "height": 1024, "batch_size": 1}
    assert prompt["48:33"]["inputs"]["seed"] == 0
    assert prompt["48:33"]["inputs"]["sampler_name"] == "res_multistep"
    assert prompt["48:34"]["inputs"] == {
        "ckpt_name": "NetaYumev35_pretrained_all_in_one.safetensors"
    }
    # A widget input fed by a link is a link, not its stale saved value.
    assert prompt["48:49"]["inputs"] == {
        "string_a": ["48:52", 0],
        "string_b": ["48:51", 0],
        "delimiter": "",
    }


def test_nested_subgraphs_link_through_both_levels(object_info) -> None:
    prompt = to_api(template("image_netayume_lumina_t2i"), lumina_info(object_info).get).prompt
    # Into the inner subgraph: its clip input comes from the outer one's checkpoint loader.
    assert prompt["48:35:43"]["inputs"] == {"text": ["48:35:40", 0], "clip": ["48:34", 1]}
    # Out of it: the sampler's negative is the inner subgraph's output.
    assert prompt["48:33"]["inputs"]["negative"] == ["48:35:43", 0]
    assert prompt["48:33"]["inputs"]["positive"] == ["48:50", 0]
    assert prompt["48:35:40"]["inputs"]["string_b"] == ["48:35:42", 0]
    assert prompt["48:35:42"]["inputs"]["value"].startswith("blurry, worst quality")


def test_unknown_node_type_names_every_node(object_info) -> None:
    with pytest.raises(WorkflowInvalid) as caught:
        to_api(template("image_netayume_lumina_t2i"), object_info.get, "Server gpu1")
    message = caught.value.message
    assert message.startswith("Server gpu1 has no node type")
    assert "EmptySD3LatentImage" not in message  # the emulator has that one
    assert "StringConcatenate (nodes 48:35:40, 48:49)" in message
    assert "PrimitiveStringMultiline (nodes 48:35:41, 48:35:42, 48:51, 48:52)" in message


def test_primitive_node_feeds_a_converted_widget(object_info) -> None:
    workflow = template("sdxl_simple_example")
    # The primitives' values win over the widgets' stale saved values.
    steps = next(n for n in workflow["nodes"] if n["id"] == 45)
    steps["widgets_values"] = [30, "fixed"]
    text = next(n for n in workflow["nodes"] if n["id"] == 51)
    text["widgets_values"] = ["a lighthouse"]
    prompt = to_api(workflow, object_info.get).prompt
    assert not {"45", "47", "50", "51"} & set(prompt)  # PrimitiveNodes are frontend-only
    assert prompt["10"]["inputs"] == {
        "add_noise": "enable",
        "noise_seed": 721897303308196,
        "steps": 30,
        "cfg": 8,
        "sampler_name": "euler",
        "scheduler": "normal",
        "start_at_step": 0,
        "end_at_step": 20,
        "return_with_leftover_noise": "enable",
        "model": ["4", 0],
        "positive": ["6", 0],
        "negative": ["7", 0],
        "latent_image": ["5", 0],
    }
    assert prompt["11"]["inputs"]["steps"] == 30
    assert prompt["11"]["inputs"]["start_at_step"] == 20  # primitive 47
    assert prompt["6"]["inputs"]["text"] == prompt["15"]["inputs"]["text"] == "a lighthouse"
    assert prompt["7"]["inputs"]["text"] == "text, watermark"


def test_only_bypassed_nodes_is_nothing_to_run(object_info) -> None:
    workflow = template("image_sdxl_simple")
    for each in workflow["nodes"]:
        each["mode"] = 4
    with pytest.raises(WorkflowInvalid, match="no node to run"):
        to_api(workflow, object_info.get)


def test_a_bypassed_loader_is_not_sent(object_info) -> None:
    info = dict(object_info)
    info["FluxProUltraImageNode"] = node_spec(("image_prompt", "IMAGE", {}), output=("IMAGE",))
    prompt = to_api(template("api_bfl_flux_pro_t2i"), info.get).prompt
    # The bypassed LoadImage (14) has no input of its type to pass on: the link is dropped.
    assert set(prompt) == {"11", "12"}
    assert prompt["11"]["inputs"] == {}
    assert prompt["12"]["inputs"]["images"] == ["11", 0]


def node(
    id_: int,
    type_: str,
    inputs: list | None = None,
    outputs: list | None = None,
    values: Any = None,
    mode: int = 0,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": id_,
        "type": type_,
        "mode": mode,
        "inputs": inputs or [],
        "outputs": outputs or [],
        "properties": {},
    }
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
        "last_node_id": 9,
        "last_link_id": 7,
        "version": 0.4,
        "nodes": [
            node(1, "EmptyImage", outputs=[image_out(1, 5)], values=[64, 32, 1, 255]),
            node(
                2,
                "Reroute",
                inputs=[{"name": "", "type": "*", "link": 1}],
                outputs=[{"name": "", "type": "IMAGE", "links": [2]}],
            ),
            node(
                3,
                "SlowProgress",
                inputs=[image_in(2)],
                outputs=[image_out(3)],
                values=[10, 0.3, 0, 86400, True, 0, "randomize", False],
                mode=4,
            ),
            node(4, "SaveImage", inputs=[image_in(3, "images")], values=["kept"]),
            node(5, "PreviewImage", inputs=[image_in(5, "images")], mode=2),
            node(
                6, "SaveImage", inputs=[image_in(6, "images")], values={"filename_prefix": "named"}
            ),
            node(7, "EmptyImage", outputs=[image_out(6)], values=[8, 8, 1, 0], mode=2),
            node(8, "Note", values=["remember the milk"]),
            node(9, "MarkdownNote", values=["# hi"]),
        ],
        "links": [
            [1, 1, 0, 2, 0, "*"],
            [2, 2, 0, 3, 0, "IMAGE"],
            [3, 3, 0, 4, 0, "IMAGE"],
            [5, 1, 0, 5, 0, "IMAGE"],
            [6, 7, 0, 6, 0, "IMAGE"],
        ],
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
    assert to_api(workflow, object_info.get).prompt["4"]["inputs"]["filename_prefix"] == {
        "__value__": ["a", "b"]
    }


def test_values_that_do_not_fit_the_servers_widgets_warn(object_info) -> None:
    workflow = routed_workflow()
    workflow["nodes"][3]["widgets_values"] = ["kept", "surplus", "values"]
    converted = to_api(workflow, object_info.get)
    assert converted.prompt["4"]["inputs"]["filename_prefix"] == "kept"
    (warning,) = converted.warnings
    assert warning.startswith("node 4 (SaveImage): 3 saved widget values for 1 widgets")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda w: w["links"].append([9, 1, 0]), "malformed link"),
        (lambda w: w["nodes"][3]["inputs"][0].update(link=42), "link 42"),
        (lambda w: w["links"].__setitem__(2, [3, 99, 0, 4, 0, "IMAGE"]), "node 99"),
        (lambda w: w.update(extra={"groupNodes": {"x": {}}}), "group nodes"),
    ],
)
def test_broken_workflows_are_clear_errors(object_info, change, message) -> None:
    workflow = copy.deepcopy(routed_workflow())
    change(workflow)
    with pytest.raises(WorkflowInvalid, match=message):
        to_api(workflow, object_info.get)


def test_a_subgraph_inside_itself_is_refused(object_info) -> None:
    workflow = template("image_netayume_lumina_t2i")
    inner = workflow["definitions"]["subgraphs"][1]
    inner["nodes"].append({"id": 99, "type": inner["id"], "mode": 0, "inputs": [], "outputs": []})
    with pytest.raises(WorkflowInvalid, match="nest deeper"):
        to_api(workflow, lumina_info(object_info).get)
