"""comfyctl: track ComfyUI jobs across a fleet of servers, each bound to its server."""

__version__ = "0.1.0"
