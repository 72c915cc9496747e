"""``python -m comfyctl.emulator --port N``: serve an emulated ComfyUI until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from comfyctl.emulator.runner import Emulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comfyctl.emulator", description="Serve an emulated ComfyUI server."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8188, help="port (0: any free port)")
    parser.add_argument(
        "--jobs-api", action="store_true", help="serve the newest server's /api/jobs routes"
    )
    parser.add_argument(
        "--output-dir", default=None, help="output folder (default: a temporary one)"
    )
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    emulator = Emulator(
        host=args.host, port=args.port, jobs_api=args.jobs_api, output_dir=args.output_dir
    )
    try:
        emulator.start()
    except OSError as err:
        emulator.stop()
        print(
            f"comfyctl emulator: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr
        )
        return 1
    try:
        print(f"ComfyUI emulator listening on {emulator.url}", flush=True)
        print(f"output directory: {emulator.output_dir}", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    print("ComfyUI emulator stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
