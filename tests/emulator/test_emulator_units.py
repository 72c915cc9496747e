"""Smaller pieces: encoders, validation rules, pass-through nodes, files."""

from __future__ import annotations

import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

import requests
from emulator_helpers import HTTP_TIMEOUT, get_json, post_prompt, workflow

from comfyctl.emulator import Emulator
from comfyctl.emulator.images import encode_jpeg, encode_png, encode_webp, read_png_info
from comfyctl.emulator.validation import validate_prompt

TXT2IMG: dict[str, Any] = {
    "4": {
        "class_type": "CheckpointLoaderSimple",
        "inputs": {"ckpt_name": "emulator.safetensors"},
    },
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 2}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 1,
            "steps": 4,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {
        "class_type": "SaveImage",
        "inputs": {"filename_prefix": "runs/txt2img", "images": ["8", 0]},
    },
}


def test_png_roundtrip() -> None:
    data = encode_png(5, 3, (1, 2, 3), text={"prompt": "{}"})
    assert read_png_info(data) == (5, 3, (1, 2, 3))
    assert b"tEXtprompt\x00{}" in data
    (length,) = struct.unpack(">I", data[8:12])
    assert data[12:16] == b"IHDR" and length == 13
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    assert read_png_info(b"not a png") is None


def test_jpeg_and_webp_structure() -> None:
    jpeg = encode_jpeg(20, 10, (200, 10, 10))
    assert jpeg.startswith(b"\xff\xd8\xff\xe0") and jpeg.endswith(b"\xff\xd9")
    assert struct.unpack(">HH", jpeg[jpeg.index(b"\xff\xc0") + 5 : jpeg.index(b"\xff\xc0") + 9])
    webp = encode_webp(7, 9, (1, 2, 3))
    assert webp[:4] == b"RIFF" and webp[8:16] == b"WEBPVP8L"
    assert struct.unpack("<I", webp[4:8])[0] == len(webp) - 8
    bits = int.from_bytes(webp[21:25], "little")
    assert webp[20] == 0x2F and (bits & 0x3FFF) + 1 == 7 and ((bits >> 14) & 0x3FFF) + 1 == 9


def _errors(prompt: dict[str, Any]) -> list[str]:
    valid, error, _, node_errors = validate_prompt(prompt)
    assert not valid and error is not None
    return [e["type"] for node in node_errors.values() for e in node["errors"]]


def test_validation_rules() -> None:
    graph = workflow("quick")
    graph["2"]["inputs"]["image"] = ["1", 0, 0]
    assert _errors(graph) == ["bad_linked_input"]
    graph = workflow("quick")
    graph["3"]["inputs"]["images"] = ["2", 0]
    graph["2"]["inputs"]["steps"] = 10**6
    assert _errors(graph) == ["value_bigger_than_max"]
    graph = workflow("quick")
    graph["2"]["inputs"]["steps"] = "many"
    assert _errors(graph) == ["invalid_input_type"]
    mismatch = {
        "1": TXT2IMG["5"],
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    assert _errors(mismatch) == ["return_type_mismatch"]
    graph = workflow("quick")
    graph["1"] = {
        "class_type": "SlowProgress",
        "inputs": {"image": ["2", 0], "steps": 1, "seconds_per_step": 0},
    }
    assert _errors(graph) == ["dependency_cycle", "dependency_cycle"]

    graph = workflow("quick")
    graph["2"]["inputs"]["steps"] = "7"
    graph["2"]["inputs"]["seconds_per_step"] = 1
    valid, _, outputs, _ = validate_prompt(graph)
    assert valid and outputs == ["3"]
    assert graph["2"]["inputs"]["steps"] == 7  # converted in place, like ComfyUI
    assert isinstance(graph["2"]["inputs"]["seconds_per_step"], float)

    missing = {"1": {"inputs": {}}}
    assert validate_prompt(missing)[1] == {
        "type": "invalid_prompt",
        "message": "Cannot execute because a node is missing the class_type property.",
        "details": "Node ID '#1'",
        "extra_info": {},
    }


def test_partial_success_reports_node_errors(emulator: Emulator) -> None:
    emulator.faults.seconds_per_step = 0.01
    graph = workflow("quick")
    graph["4"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0]}}
    graph["5"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    }
    reply = post_prompt(emulator, graph)
    assert list(reply["node_errors"]) == ["4"]
    assert reply["node_errors"]["4"]["errors"][0]["type"] == "required_input_missing"
    emulator.wait_idle()
    entry = get_json(emulator, f"/history/{reply['prompt_id']}")[reply["prompt_id"]]
    assert entry["prompt"][4] == ["3"] and list(entry["outputs"]) == ["3"]


def test_typical_txt2img_workflow_runs(emulator: Emulator) -> None:
    emulator.faults.seconds_per_step = 0.01
    reply = post_prompt(emulator, TXT2IMG, client_id="user")
    emulator.wait_idle()
    entry = get_json(emulator, f"/history/{reply['prompt_id']}")[reply["prompt_id"]]
    assert entry["status"]["status_str"] == "success"
    images = entry["outputs"]["9"]["images"]
    assert [i["filename"] for i in images] == ["txt2img_00001_.png", "txt2img_00002_.png"]
    assert {i["subfolder"] for i in images} == {"runs"}
    saved = Path(emulator.output_dir) / "runs" / "txt2img_00002_.png"
    assert read_png_info(saved.read_bytes()) == (64, 48, (128, 128, 128))
    view = requests.get(emulator.url + "/view", params=images[0], timeout=HTTP_TIMEOUT)
    assert view.status_code == 200
    info = get_json(emulator, "/object_info/KSampler")["KSampler"]
    assert info["input"]["required"]["steps"][1]["default"] == 20


def test_preview_image_goes_to_temp(emulator: Emulator) -> None:
    emulator.faults.seconds_per_step = 0.01
    graph = workflow("quick")
    graph["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    reply = post_prompt(emulator, graph)
    emulator.wait_idle()
    image = get_json(emulator, f"/history/{reply['prompt_id']}")[reply["prompt_id"]]["outputs"][
        "3"
    ]["images"][0]
    assert image["type"] == "temp" and image["filename"].startswith("ComfyUI_temp_")
    view = requests.get(emulator.url + "/view", params=image, timeout=HTTP_TIMEOUT)
    assert view.status_code == 200
    wrong = requests.get(emulator.url + "/view", params={**image, "type": "output"}, timeout=10)
    assert wrong.status_code == 404


def test_save_prefix_outside_output_is_an_execution_error(emulator: Emulator) -> None:
    emulator.faults.seconds_per_step = 0.01
    graph = workflow("quick", **{"3": {"filename_prefix": "../escape"}})
    reply = post_prompt(emulator, graph)
    emulator.wait_idle()
    status = get_json(emulator, f"/history/{reply['prompt_id']}")[reply["prompt_id"]]["status"]
    assert status["status_str"] == "error"
    assert status["messages"][-1][1]["exception_type"] == "ValueError"
    assert not (Path(emulator.output_dir).parent / "escape_00001_.png").exists()


def test_upload_then_load_image(emulator: Emulator) -> None:
    emulator.faults.seconds_per_step = 0.01
    png = encode_png(10, 12, (9, 8, 7))
    files = {"image": ("in.png", png, "image/png")}
    first = requests.post(emulator.url + "/upload/image", files=files, timeout=HTTP_TIMEOUT)
    assert first.json() == {"name": "in.png", "subfolder": "", "type": "input"}
    other = {"image": ("in.png", encode_png(1, 1, (0, 0, 0)), "image/png")}
    second = requests.post(emulator.url + "/upload/image", files=other, timeout=HTTP_TIMEOUT)
    assert second.json()["name"] == "in (1).png"
    listed = get_json(emulator, "/object_info/LoadImage")["LoadImage"]["input"]["required"]
    assert listed["image"][0] == ["in (1).png", "in.png"]
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    reply = post_prompt(emulator, graph)
    emulator.wait_idle()
    saved = Path(emulator.output_dir) / "x_00001_.png"
    assert read_png_info(saved.read_bytes()) == (10, 12, (9, 8, 7))
    assert get_json(emulator, f"/history/{reply['prompt_id']}")


def test_queue_clear_and_front(emulator: Emulator) -> None:
    stall = post_prompt(emulator, workflow("stall", **{"2": {"seed": 1}}))["prompt_id"]
    ids = [
        post_prompt(emulator, workflow("quick", **{"2": {"seed": n}}))["prompt_id"]
        for n in range(3)
    ]
    pending = get_json(emulator, "/queue")["queue_pending"]
    assert sorted(item[1] for item in pending) == sorted(ids)
    cleared = requests.post(emulator.url + "/queue", json={"clear": True}, timeout=10)
    assert cleared.status_code == 200 and cleared.content == b""
    assert get_json(emulator, "/queue")["queue_pending"] == []
    requests.post(emulator.url + "/interrupt", json={"prompt_id": stall}, timeout=10)
    emulator.wait_idle()
    assert get_json(emulator, "/history")[stall]["status"]["status_str"] == "error"
    assert uuid.UUID(stall)
