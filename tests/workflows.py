"""The API-format test workflow used across the suite: EmptyImage -> SlowProgress (or
FailAtStep) -> SaveImage, the shape of the real captures' workflows. The emulator takes
the job's timing from ``steps`` and ``seconds_per_step``."""

from __future__ import annotations


def slow_graph(steps: int = 2, seconds: float = 0.01, fail_at: int | None = None,
               prefix: str = "job") -> dict:
    middle: dict = {"class_type": "SlowProgress",
                    "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": seconds,
                               "seed": 0}}
    if fail_at is not None:
        middle = {"class_type": "FailAtStep",
                  "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": seconds,
                             "fail_at_step": fail_at}}
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": middle,
        "3": {"class_type": "SaveImage",
              "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }
