"""The API-format test workflow used across the suite: EmptyImage -> SlowProgress (or
FailAtStep) -> SaveImage, the shape of the real captures' workflows. The emulator takes
the job's timing from ``steps`` and ``seconds_per_step``."""

from __future__ import annotations


def slow_graph(
    steps: int = 2, seconds: float = 0.01, fail_at: int | None = None, prefix: str = "job"
) -> dict:
    middle: dict = {
        "class_type": "SlowProgress",
        "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": seconds, "seed": 0},
    }
    if fail_at is not None:
        middle = {
            "class_type": "FailAtStep",
            "inputs": {
                "image": ["1", 0],
                "steps": steps,
                "seconds_per_step": seconds,
                "fail_at_step": fail_at,
            },
        }
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": middle,
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def template_names() -> list[str]:
    """The workflow templates the ComfyUI frontend saved, from the pinned
    comfyui-workflow-templates-json package (the test extra); its index*.json and
    fuse_options.json are the template browser's, not workflows."""
    from importlib.resources import files

    folder = files("comfyui_workflow_templates_json") / "templates"
    return sorted(
        p.name[:-5]
        for p in folder.iterdir()
        if p.name.endswith(".json")
        and not p.name.startswith("index")
        and p.name != "fuse_options.json"
    )


def template_path(name: str) -> str:
    from importlib.resources import files

    return str(files("comfyui_workflow_templates_json") / "templates" / f"{name}.json")


def template(name: str) -> dict:
    import json
    from pathlib import Path

    return json.loads(Path(template_path(name)).read_text())


def node_spec(*inputs: tuple, output: tuple = (), name: str = "") -> dict:
    """An /object_info entry for a node the emulator lacks: ``(name, type, options)``
    required inputs in order, as ComfyUI declares them."""
    return {
        "input": {"required": {n: [t, o] for n, t, o in inputs}},
        "input_order": {"required": [n for n, _, _ in inputs]},
        "output": list(output),
        "display_name": name,
    }


def submit_jobs(invoke, tmp_path, server: str, graph: dict, count: int = 1) -> list[str]:
    """Submit ``graph`` to ``server`` in-process; the printed prompt ids."""
    import json
    import uuid

    wf = tmp_path / f"wf-{uuid.uuid4().hex[:6]}.json"
    wf.write_text(json.dumps(graph))
    result = invoke("submit", str(wf), "-s", server, "--count", str(count))
    assert result.exit_code == 0, result.stderr
    return result.stdout.split()
