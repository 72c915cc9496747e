"""Issue 15 acceptance: inputs uploaded to the bound server, UI-format workflows, checks
against the bound server. Everything runs against emulators on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from workflows import template, template_path

from comfyctl.emulator import Emulator
from comfyctl.emulator.images import encode_png, read_png_info
from comfyctl.ledger import Ledger


def load_save(prefix: str = "li", steps: int = 1, seconds: float = 0.01) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
        "2": {
            "class_type": "SlowProgress",
            "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": seconds},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (3, 2)) -> Path:
    path.write_bytes(encode_png(size[0], size[1], rgb))
    return path


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def history_prompt(emu: Emulator, prompt_id: str) -> dict[str, Any]:
    entry = requests.get(f"{emu.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    return entry["prompt"][2]


def wait_finished(emu: Emulator, prompt_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entry = requests.get(f"{emu.url}/history/{prompt_id}", timeout=10).json()
        if prompt_id in entry:
            return entry[prompt_id]
        time.sleep(0.05)
    raise AssertionError(f"{prompt_id} did not finish on {emu.url}")


# -- inputs ------------------------------------------------------------------------------


def test_input_goes_to_the_bound_server_only_and_once(
    emulator_factory, tmp_path, invoke, ledger_path
) -> None:
    a, b = emulator_factory(), emulator_factory()
    wf = write_json(tmp_path / "wf.json", load_save())
    local = png(tmp_path / "local.png", (10, 20, 30))
    first = invoke("-v", "submit", str(wf), "-s", b.url, "--set", f"1.image=@{local}", "--wait")
    assert first.exit_code == 0, first.stderr
    assert "uploading" in first.stderr
    pid = first.stdout.split()[0]
    assert files(b.input_dir) == {"local.png": local.read_bytes()}
    assert files(a.input_dir) == {}  # nowhere else
    # It ran on b with that very image: the saved output has its colour.
    output = next(b.output_dir.glob("li_*.png"))
    assert read_png_info(output.read_bytes()) == (3, 2, (10, 20, 30))
    assert history_prompt(b, pid)["1"]["inputs"]["image"] == "local.png"
    assert Ledger(ledger_path).get(pid)["inputs"][0]["path"] == str(local.resolve())

    again = invoke("-v", "submit", str(wf), "-s", b.url, "--set", f"1.image=@{local}")
    assert again.exit_code == 0, again.stderr
    assert "uploading" not in again.stderr and "already on" in again.stderr
    assert files(b.input_dir) == {"local.png": local.read_bytes()}

    # A different file with the same base name does not replace the first.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = png(other_dir / "local.png", (200, 100, 0))
    third = invoke("submit", str(wf), "-s", b.url, "--set", f"1.image=@{other}", "--wait")
    assert third.exit_code == 0, third.stderr
    assert files(b.input_dir) == {
        "local.png": local.read_bytes(),
        "local (1).png": other.read_bytes(),
    }
    assert history_prompt(b, third.stdout.split()[0])["1"]["inputs"]["image"] == "local (1).png"


def test_a_file_deleted_on_the_server_is_uploaded_again(emulator, tmp_path, invoke) -> None:
    wf = write_json(tmp_path / "wf.json", load_save())
    local = png(tmp_path / "in.png", (1, 1, 1))
    assert (
        invoke(
            "submit", str(wf), "-s", emulator.url, "--set", f"1.image=@{local}", "--wait"
        ).exit_code
        == 0
    )
    (emulator.input_dir / "in.png").unlink()
    result = invoke(
        "-v", "submit", str(wf), "-s", emulator.url, "--set", f"1.image=@{local}", "--wait"
    )
    assert result.exit_code == 0, result.stderr
    assert "uploading" in result.stderr
    assert files(emulator.input_dir) == {"in.png": local.read_bytes()}


def test_input_goes_to_the_server_chosen_among_several(emulator_factory, tmp_path, invoke) -> None:
    busy, idle = emulator_factory(), emulator_factory()
    stall = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {
            "class_type": "SlowProgress",
            "inputs": {"image": ["1", 0], "steps": 5, "seconds_per_step": 0.01, "stall_at_step": 1},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "s"}},
    }
    requests.post(busy.url + "/prompt", json={"prompt": stall}, timeout=10).raise_for_status()
    wf = write_json(tmp_path / "wf.json", load_save())
    local = png(tmp_path / "in.png", (5, 5, 5))
    result = invoke(
        "submit", str(wf), "-s", busy.url, "-s", idle.url, "--set", f"1.image=@{local}", "--nl"
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["server_url"] == idle.url
    assert files(idle.input_dir) == {"in.png": local.read_bytes()}
    assert files(busy.input_dir) == {}


def test_lost_job_resubmitted_elsewhere_uploads_its_input_there(
    emulator_factory, tmp_path, invoke, ledger_path
) -> None:
    a, b = emulator_factory(), emulator_factory()
    wf = write_json(tmp_path / "wf.json", load_save(steps=100, seconds=0.05))
    local = png(tmp_path / "in.png", (9, 8, 7))
    submitted = invoke("submit", str(wf), "-s", b.url, "--set", f"1.image=@{local}")
    assert submitted.exit_code == 0, submitted.stderr
    pid = submitted.stdout.strip()
    png(a.input_dir / "in.png", (0, 0, 0))  # a already has another file of that name
    b.restart()  # the job is lost
    a.faults.seconds_per_step = 0.001
    result = invoke("recover", "--resubmit", "--to", a.url, "--nl")
    assert result.exit_code == 0, result.stdout + result.stderr
    (action,) = [json.loads(line) for line in result.stdout.splitlines()]
    child = action["new_prompt_id"]
    entry = wait_finished(a, child)
    assert entry["status"]["status_str"] == "success"
    assert entry["prompt"][2]["1"]["inputs"]["image"] == "in (1).png"
    assert files(a.input_dir)["in (1).png"] == local.read_bytes()
    record = Ledger(ledger_path).get(child)
    assert (
        record["server_url"] == a.url and record["inputs"] == Ledger(ledger_path).get(pid)["inputs"]
    )


def test_upload_failures_leave_no_record(emulator_factory, tmp_path, invoke, ledger_path) -> None:
    small = emulator_factory(max_upload_size=2048)
    wf = write_json(tmp_path / "wf.json", load_save())
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 10000)
    result = invoke("submit", str(wf), "-s", small.url, "--set", f"1.image=@{big}")
    assert result.exit_code == 2
    assert "larger than its upload limit" in result.stderr and "HTTP 413" in result.stderr
    assert result.stdout == ""
    small.stop()
    local = png(tmp_path / "in.png", (1, 2, 3))
    down = invoke("submit", str(wf), "-s", small.url, "--set", f"1.image=@{local}")
    assert down.exit_code == 3 and "unreachable" in down.stderr
    tasks = Ledger(ledger_path).load() if ledger_path.exists() else {}
    assert len(tasks) == 0
    assert not (ledger_path.parent / "workflows").exists()


def test_literal_at_and_missing_file(emulator, tmp_path, invoke) -> None:
    wf = write_json(tmp_path / "wf.json", load_save())
    check = invoke(
        "validate",
        str(wf),
        "-s",
        emulator.url,
        "--set",
        "3.filename_prefix=@@x",
        "--set",
        f"1.image=@{png(tmp_path / 'a.png', (0, 0, 0))}",
        "--json",
    )
    assert check.exit_code == 0, check.stdout + check.stderr
    result = invoke(
        "submit",
        str(wf),
        "-s",
        emulator.url,
        "--set",
        "3.filename_prefix=@@x",
        "--set",
        f"1.image=@{tmp_path / 'a.png'}",
        "--wait",
    )
    assert result.exit_code == 0, result.stderr
    assert list(emulator.output_dir.glob("@x_*.png"))


# -- UI-format workflows -----------------------------------------------------------------


def test_convert_prints_the_api_prompt(emulator, invoke) -> None:
    result = invoke("convert", template_path("image_sdxl_simple"), "-s", emulator.url)
    assert result.exit_code == 0, result.stderr
    prompt = json.loads(result.stdout)
    assert prompt["12"]["inputs"]["seed"] == 812045847300606
    assert prompt["7"]["inputs"]["images"] == ["14", 0]
    api = invoke("convert", "-", "-s", emulator.url, "--compact", input=result.stdout)
    assert json.loads(api.stdout) == prompt  # API format passes through
    two = invoke(
        "convert", template_path("image_sdxl_simple"), "-s", emulator.url, "-s", emulator.url + "/"
    )
    assert two.exit_code == 0  # the same server twice is one server


def test_convert_names_the_missing_node_and_server(emulator, invoke) -> None:
    result = invoke("convert", template_path("api_bfl_flux1_expand_image"), "-s", emulator.url)
    assert result.exit_code == 2
    assert "has no node type FluxProExpandNode (node 7)" in result.stderr
    assert emulator.url.split("//")[1] in result.stderr
    assert result.stdout == ""


def test_ui_workflow_runs_the_same_graph_as_its_api_export(emulator, tmp_path, invoke) -> None:
    # Modulo model files: give the emulator the checkpoint the saved workflow names.
    (emulator.models_dir / "checkpoints" / "sd_xl_base_1.0.safetensors").touch()
    emulator.faults.seconds_per_step = 0.001
    ui = template_path("image_sdxl_simple")
    export = invoke("convert", str(ui), "-s", emulator.url)
    api = tmp_path / "api.json"
    api.write_text(export.stdout)
    from_ui = invoke("submit", str(ui), "-s", emulator.url, "--wait")
    from_api = invoke("submit", str(api), "-s", emulator.url, "--wait")
    assert from_ui.exit_code == 0 and from_api.exit_code == 0, from_ui.stderr + from_api.stderr
    first = history_prompt(emulator, from_ui.stdout.split()[0])
    second = history_prompt(emulator, from_api.stdout.split()[0])
    assert first == second and set(first) == {"7", "10", "11", "12", "13", "14", "15"}


def test_object_info_is_cached_per_server_and_version(emulator, invoke, isolated_state) -> None:
    ui = template_path("image_sdxl_simple")
    assert invoke("convert", ui, "-s", emulator.url).exit_code == 0
    (cache,) = (isolated_state / "cache" / "object_info").glob("*-0.3.64.json")
    doc = json.loads(cache.read_text())
    assert doc["server_url"] == emulator.url and doc["version"] == "0.3.64"
    doc["object_info"]["KSampler"]["display_name"] = "from the cache"
    cache.write_text(json.dumps(doc))
    cached = json.loads(invoke("convert", ui, "-s", emulator.url).stdout)
    assert cached["12"]["_meta"]["title"] == "from the cache"  # no new fetch
    del doc["object_info"]["VAEDecode"]  # a node the cached copy lacks: fetch again
    cache.write_text(json.dumps(doc))
    fresh = json.loads(invoke("convert", ui, "-s", emulator.url).stdout)
    assert fresh["12"]["_meta"]["title"] == "KSampler"
    assert "VAEDecode" in json.loads(cache.read_text())["object_info"]


# -- validate / submit --check -----------------------------------------------------------


BROKEN: dict[str, Any] = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
    "2": {"class_type": "SlowProgress", "inputs": {"image": ["1", 0], "steps": 0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "b"}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "emulatr.safetensors"}},
    "5": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 1,
            "steps": 1,
            "cfg": 200,
            "sampler_name": "eular",
            "scheduler": "normal",
            "denoise": 1,
            "model": ["4", 0],
            "positive": ["9", 0],
            "negative": ["4", 1],
            "latent_image": ["4", 2],
        },
    },
    "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
    "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    "8": {"class_type": "UpscaleModelLoadr", "inputs": {}},
}


def test_validate_names_every_problem_in_one_run(emulator, tmp_path, invoke) -> None:
    (emulator.input_dir / "photo2.png").write_bytes(encode_png(1, 1, (0, 0, 0)))
    wf = write_json(tmp_path / "broken.json", BROKEN)
    result = invoke("validate", str(wf), "-s", emulator.url)
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert len(lines) == 10, lines
    for fragment in (
        "node 8 (UpscaleModelLoadr): server",
        "has no node type 'UpscaleModelLoadr'",
        "node 1 (LoadImage) image: file 'photo.png' is not in server",
        "node 2 (SlowProgress) steps: 0 is below the minimum 1",
        "node 2 (SlowProgress) seconds_per_step: required input is missing",
        "ckpt_name: 'emulatr.safetensors' is not one of the 1 values",
        "nearest: emulator.safetensors",
        "node 5 (KSampler) cfg: 200 is above the maximum 100.0",
        "sampler_name: 'eular' is not one of the 27 values",
        "positive: is linked to node 9, which the workflow does not have",
        "negative: expects CONDITIONING, but node 4 output 1 gives CLIP",
        "latent_image: expects LATENT, but node 4 output 2 gives VAE",
    ):
        assert any(fragment in line for line in lines), fragment
    assert "nearest: photo2.png" in lines[1]
    assert "euler" in next(line for line in lines if "eular" in line)
    assert "10 problems" in result.stderr


def test_validate_json_and_a_clean_workflow(emulator, tmp_path, invoke) -> None:
    good = {k: v for k, v in BROKEN.items() if k in ("1", "2", "3")}
    good["2"] = {
        "class_type": "SlowProgress",
        "inputs": {"image": ["1", 0], "steps": 2, "seconds_per_step": 0.01},
    }
    wf = write_json(tmp_path / "good.json", good)
    bad = invoke("validate", str(wf), "-s", emulator.url, "--json")
    assert bad.exit_code == 2
    doc = json.loads(bad.stdout)
    assert doc["schema"] == "comfyctl.validation" and doc["ok"] is False
    (problem,) = doc["servers"][0]["problems"]
    assert problem == {
        "node": "1",
        "class_type": "LoadImage",
        "input": "image",
        "message": problem["message"],
        "nearest": [],
    }
    (emulator.input_dir / "photo.png").write_bytes(encode_png(1, 1, (0, 0, 0)))
    clean = invoke("validate", str(wf), "-s", emulator.url)
    assert clean.exit_code == 0, clean.stdout
    assert clean.stdout == "" and "valid on" in clean.stderr


def test_validate_a_ui_workflow_and_an_optional_input_from_set(emulator, tmp_path, invoke) -> None:
    ui = template_path("image_sdxl_simple")
    result = invoke("validate", ui, "-s", emulator.url)
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        "node 15 (CheckpointLoaderSimple) ckpt_name: 'sd_xl_base_1.0.safetensors' "
        f"is not one of the 1 values server {emulator.url.split('//')[1]} offers; nearest: "
        "emulator.safetensors"
    ]
    nested = invoke("validate", template_path("image_netayume_lumina_t2i"), "-s", emulator.url)
    assert nested.exit_code == 2
    # One line a node: StringConcatenate 48:35:40 and 48:49, four PrimitiveStringMultiline.
    assert sum("has no node type" in line for line in nested.stdout.splitlines()) == 6
    wf = write_json(tmp_path / "wf.json", load_save())
    (emulator.input_dir / "placeholder.png").write_bytes(encode_png(1, 1, (0, 0, 0)))
    ok = invoke("validate", str(wf), "-s", emulator.url, "--set", "2.stall_at_step=1")
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    undeclared = invoke("validate", str(wf), "-s", emulator.url, "--set", "2.stal_at_step=1")
    assert undeclared.exit_code == 2
    assert "no input 'stal_at_step' on server" in undeclared.stderr


def test_submit_check_stops_before_anything_is_queued(
    emulator, tmp_path, invoke, ledger_path
) -> None:
    wf = write_json(tmp_path / "broken.json", BROKEN)
    local = png(tmp_path / "in.png", (1, 1, 1))
    bad = invoke("submit", str(wf), "-s", emulator.url, "--check", "--set", f"1.image=@{local}")
    assert bad.exit_code == 2
    assert not any("photo.png" in line for line in bad.stdout.splitlines())  # to be uploaded
    good = write_json(tmp_path / "good.json", load_save())
    ok = invoke("submit", str(good), "-s", emulator.url, "--check", "--set", f"1.image=@{local}")
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    assert ok.stdout == ""
    assert files(emulator.input_dir) == {}  # --check uploads nothing
    assert requests.get(emulator.url + "/history", timeout=10).json() == {}
    assert not ledger_path.exists() or len(Ledger(ledger_path).load()) == 0


@pytest.mark.parametrize("jobs_api", [False, True])
def test_subprocess_ui_workflow_with_upload(
    emulator_factory, tmp_path, run_comfyctl, jobs_api
) -> None:
    emu = emulator_factory(jobs_api=jobs_api)
    emu.faults.seconds_per_step = 0.001
    local = png(tmp_path / "photo.png", (40, 50, 60), (5, 4))
    # LoadImage -> a subgraph around an API node -> SaveImage. The API node is not on the
    # emulator: put one it has in its place, fed by the subgraph's image input.
    workflow = template("api_google_nano_banana2_image_edit_continuation")
    (definition,) = workflow["definitions"]["subgraphs"]
    (inner,) = definition["nodes"]
    inner.update(
        type="SlowProgress",
        widgets_values=[2, 0.01],
        inputs=[{"name": "image", "type": "IMAGE", "link": 1}],
    )
    definition["links"] = [link for link in definition["links"] if link["id"] != 2]
    definition["links"][0]["target_slot"] = 0
    saved = write_json(tmp_path / "saved.json", workflow)
    check = run_comfyctl(
        "submit", str(saved), "-s", emu.url, "--check", "--set", f"1.image=@{local}"
    )
    assert check.returncode == 0, check.stdout + check.stderr
    done = run_comfyctl(
        "submit", str(saved), "-s", emu.url, "--set", f"1.image=@{local}", "--wait", "--json"
    )
    assert done.returncode == 0, done.stderr
    pid = json.loads(done.stdout.splitlines()[0])["prompt_id"]
    prompt = history_prompt(emu, pid)
    assert set(prompt) == {"1", "2:2", "4"}
    assert prompt["1"]["inputs"]["image"] == "photo.png"
    assert prompt["2:2"]["inputs"]["image"] == ["1", 0]
    output = next(emu.output_dir.glob("api_google_nano_banana2_image_edit_continuation_*.png"))
    assert read_png_info(output.read_bytes()) == (5, 4, (40, 50, 60))
