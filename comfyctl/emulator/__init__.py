"""A faithful ComfyUI emulator, for comfyctl's tests, demos and users' own script tests.

Sources of truth
----------------
* Real HTTP/WebSocket captures of ComfyUI 0.3.64 (commit
  ``a125cd84b054a57729b5eecab930ca9408719832``) in ``comfyui-protocol/``: shapes,
  status codes, content types and message order are matched against them by the tests.
* ComfyUI's source for what the captures do not show, read from Comfy-Org/ComfyUI:
  ``server.py`` (commit 002c3fb9a504255ccb3edb668c08b8f56e63d14a), ``execution.py``
  (04e2a914334246661a77665aa14068a0670e3321), ``main.py``
  (02018c7eb5887b889ba26d0f5c43fc1041026e71), ``comfy_execution/progress.py``
  (1b71f2753280380bb6bbce53e5787dca42b30be1), ``comfy_execution/jobs.py``
  (172be438576532bd3d7243c5608ddde8a31e2944), and ``nodes.py`` / ``folder_paths.py`` /
  ``server.py``'s ``image_upload`` at a125cd84 (input and model folder combos, LoadImage's
  ``VALIDATE_INPUTS``, upload renaming). No ComfyUI code is copied: this is a small
  re-implementation of the observable behaviour.

Two generations
---------------
``jobs_api=False`` (default) is the captured 0.3.64 server, which has no job API
(``/api/jobs`` answers 404 with an empty body). ``jobs_api=True`` adds what the newest
server does around jobs: ``GET /api/jobs`` (status filter, workflow_id, sort_by
created_at|execution_duration, sort_order, limit, offset), ``GET /api/jobs/{id}``,
``POST /api/jobs/{id}/cancel`` and ``POST /api/jobs/cancel``; ``extra_data.create_time``
on queued prompts; canonical-UUID check of a client-chosen ``prompt_id``; and
``missing_node_type`` for unknown classes.

Modules: :mod:`.server` (routes, messages), :mod:`.engine` (queue, executor, progress),
:mod:`.validation`, :mod:`.nodes` (catalogue), :mod:`.jobs`, :mod:`.images` (PNG/JPEG/WebP
without PIL), :mod:`.faults`, :mod:`.runner` (:class:`Emulator`), :mod:`.pytest_plugin`.
aiohttp is the only dependency beyond the standard library; nothing else from comfyctl is
imported.

    >>> from comfyctl.emulator import Emulator
    >>> with Emulator() as emu:           # doctest: +SKIP
    ...     requests.get(emu.url + "/queue").json()
"""

from comfyctl.emulator.faults import Faults
from comfyctl.emulator.runner import Emulator

__all__ = ["Emulator", "Faults"]
