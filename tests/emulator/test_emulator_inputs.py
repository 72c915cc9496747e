"""Input files and combos as ComfyUI's ``image_upload``, ``INPUT_TYPES`` and
``VALIDATE_INPUTS`` treat them: uploads rename on a clash and reuse the same content,
LoadImage needs its file in the input dir, combos take only listed values."""

from __future__ import annotations

from typing import Any

import requests
from emulator_helpers import HTTP_TIMEOUT, get_json, post_prompt

from comfyctl.emulator import Emulator
from comfyctl.emulator.images import encode_png


def upload(emu: Emulator, name: str, content: bytes, **fields: str) -> requests.Response:
    return requests.post(
        emu.url + "/upload/image",
        files={"image": (name, content)},
        data=fields,
        timeout=HTTP_TIMEOUT,
    )


def load_and_save(image: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }


def test_same_content_is_reused_and_not_rewritten(emulator: Emulator) -> None:
    png = encode_png(2, 2, (1, 2, 3))
    assert upload(emulator, "a.png", png).json() == {
        "name": "a.png",
        "subfolder": "",
        "type": "input",
    }
    stamp = (emulator.input_dir / "a.png").stat().st_mtime_ns
    again = upload(emulator, "a.png", png).json()
    assert again["name"] == "a.png"
    assert (emulator.input_dir / "a.png").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in emulator.input_dir.iterdir()) == ["a.png"]


def test_clash_renames_and_overwrite_replaces(emulator: Emulator) -> None:
    upload(emulator, "a.png", b"one")
    assert upload(emulator, "a.png", b"two").json()["name"] == "a (1).png"
    assert upload(emulator, "a.png", b"three").json()["name"] == "a (2).png"
    assert upload(emulator, "a.png", b"two").json()["name"] == "a (1).png"  # reused
    assert upload(emulator, "a.png", b"four", overwrite="true").json()["name"] == "a.png"
    assert (emulator.input_dir / "a.png").read_bytes() == b"four"


def test_subfolder_and_types(emulator: Emulator) -> None:
    reply = upload(emulator, "m.png", b"x", subfolder="masks", type="input")
    assert reply.json() == {"name": "m.png", "subfolder": "masks", "type": "input"}
    assert (emulator.input_dir / "masks" / "m.png").read_bytes() == b"x"
    assert upload(emulator, "t.png", b"x", type="temp").json()["type"] == "temp"
    assert upload(emulator, "e.png", b"x", subfolder="../..").status_code == 400
    assert upload(emulator, "e.png", b"x", type="nonsense").status_code == 500
    no_file = requests.post(
        emulator.url + "/upload/image", data={"image": "text"}, timeout=HTTP_TIMEOUT
    )
    assert no_file.status_code == 400


def test_too_large_is_413(emulator_factory) -> None:
    emu = emulator_factory(max_upload_size=1024)
    assert get_json(emu, "/features")["max_upload_size"] == 1024
    reply = upload(emu, "big.png", b"x" * 4096)
    assert reply.status_code == 413
    assert list(emu.input_dir.iterdir()) == []


def test_load_image_lists_images_only(emulator: Emulator) -> None:
    for name in ("b.png", "a.jpg", "notes.txt", "clip.mp4"):
        (emulator.input_dir / name).write_bytes(b"x")
    (emulator.input_dir / "sub").mkdir()
    listed = get_json(emulator, "/object_info/LoadImage")["LoadImage"]["input"]["required"]
    assert listed["image"] == [["a.jpg", "b.png"], {"image_upload": True}]
    mask = get_json(emulator, "/object_info/LoadImageMask")["LoadImageMask"]
    assert mask["input"]["required"]["image"][0] == ["a.jpg", "b.png", "clip.mp4", "notes.txt"]


def test_missing_input_file_fails_custom_validation(emulator: Emulator) -> None:
    reply = requests.post(
        emulator.url + "/prompt", json={"prompt": load_and_save("in.png")}, timeout=HTTP_TIMEOUT
    )
    assert reply.status_code == 400
    body = reply.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["1"]["errors"] == [
        {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": "image - Invalid image file: in.png",
            "extra_info": {"input_name": "image"},
        }
    ]


def test_uploaded_file_in_subfolder_validates_and_runs(emulator: Emulator) -> None:
    emulator.faults.seconds_per_step = 0.01
    upload(emulator, "in.png", encode_png(3, 4, (5, 6, 7)), subfolder="jobs")
    reply = post_prompt(emulator, load_and_save("jobs/in.png"))
    assert reply["node_errors"] == {}
    emulator.wait_idle()
    assert (emulator.output_dir / "x_00001_.png").exists()


def test_combo_value_not_in_list(emulator: Emulator) -> None:
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "nope.ckpt"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 1,
                "steps": 1,
                "cfg": 7.0,
                "sampler_name": "euler_x",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["6", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "t"}},
    }
    reply = requests.post(emulator.url + "/prompt", json={"prompt": graph}, timeout=HTTP_TIMEOUT)
    errors = reply.json()["node_errors"]
    assert (
        errors["4"]["errors"][0]["details"]
        == "ckpt_name: 'nope.ckpt' not in ['emulator.safetensors']"
    )
    sampler = errors["3"]["errors"][0]
    assert sampler["type"] == "value_not_in_list"
    assert sampler["details"] == "sampler_name: 'euler_x' not in (list of length 27)"
    assert sampler["extra_info"]["input_config"] is None
    (emulator.models_dir / "checkpoints" / "sub").mkdir()
    (emulator.models_dir / "checkpoints" / "sub" / "nope.ckpt").touch()
    listed = get_json(emulator, "/object_info/CheckpointLoaderSimple")
    assert listed["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [
        "emulator.safetensors",
        "sub/nope.ckpt",
    ]
