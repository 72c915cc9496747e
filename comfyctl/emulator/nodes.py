"""The emulator's node catalogue: input specs (``/object_info`` and validation) and what
each node does when it runs.

Test nodes (``SlowProgress``, ``FailAtStep``) match the ``comfyctl_test_nodes`` package the
protocol captures were recorded with; ``EmptyImage``, ``SaveImage`` and ``PreviewImage``
match ComfyUI's core nodes; a handful of common core classes (checkpoint loader, text
encoder, sampler, VAE...) are accepted as pass-through so users' typical workflows run.
Values flowing between nodes are small stand-ins (:class:`Image`, :class:`Latent`,
strings for models), never tensors.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from comfyctl.emulator.images import encode_jpeg, rgb_from_int


@dataclass(frozen=True)
class FolderFiles:
    """A combo whose options are the files of one of the server's folders, read on every
    ``/object_info`` and validation, as ComfyUI's ``INPUT_TYPES`` lists them.

    ``folder`` is ``"input"`` (top-level files only, filtered by MIME major type like
    ``folder_paths.filter_files_content_types``) or a models folder name such as
    ``"checkpoints"`` (walked recursively, model extensions only, like
    ``folder_paths.get_filename_list``)."""

    folder: str
    content_types: tuple[str, ...] = ()
    #: Fixed options after the files (VAELoader's ``pixel_space``).
    extra: tuple[str, ...] = ()


#: LoadImage's combo: the image files of the input directory.
INPUT_FILES = FolderFiles("input", ("image",))

#: ``folder_paths.supported_pt_extensions``.
MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")

#: The model files a new emulator starts with (empty files under ``models/``).
DEFAULT_MODELS = {"checkpoints": ["emulator.safetensors"], "loras": ["emulator_lora.safetensors"]}

#: seconds_per_step of nodes that report progress but have no such input (KSampler).
SAMPLER_SECONDS_PER_STEP = 0.05


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    batch: int
    color: int

    def __str__(self) -> str:
        return f"IMAGE(batch={self.batch}, {self.width}x{self.height}, color=#{self.color:06x})"


@dataclass(frozen=True)
class Latent:
    width: int
    height: int
    batch: int

    def __str__(self) -> str:
        return f"LATENT(batch={self.batch}, {self.width}x{self.height})"


@dataclass
class Directories:
    """The server's folders: ``--output-directory``, ``--input-directory``, temp, models."""

    output: Path
    input: Path
    temp: Path
    models: Path


class NodeContext(Protocol):
    """What a running node may do (implemented by the execution engine)."""

    node_id: str
    dirs: Directories

    def steps(self, steps: int) -> int: ...

    def seconds_per_step(self, seconds: float) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    async def stall(self, seconds: float, interruptible: bool) -> None: ...

    async def progress(self, value: int, total: int, preview: bytes | None = None) -> None: ...

    def save_images(
        self, image: Image, filename_prefix: str, kind: str
    ) -> list[dict[str, str]]: ...


NodeOutput = tuple[tuple[Any, ...], "dict[str, Any] | None"]
NodeFunction = Callable[[NodeContext, dict[str, Any]], Awaitable[NodeOutput]]


@dataclass(frozen=True)
class NodeSpec:
    name: str
    display_name: str
    category: str
    run: NodeFunction
    description: str = ""
    python_module: str = "nodes"
    required: dict[str, list[Any]] = field(default_factory=dict)
    optional: dict[str, list[Any]] = field(default_factory=dict)
    hidden: dict[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] | None = None
    output_tooltips: tuple[str, ...] | None = None
    output_node: bool = False
    #: ``VALIDATE_INPUTS``: gets the named inputs and the folders, returns True or a
    #: message. Inputs it takes skip the min/max/list checks, as in ComfyUI.
    validate_inputs: Callable[[dict[str, Any], Directories], bool | str] | None = None
    validate_args: tuple[str, ...] = ()

    def input_spec(self, name: str) -> tuple[Any, str, dict[str, Any]] | None:
        """(type, category, options) of an input, like ComfyUI's ``get_input_info``."""
        for category, table in (("required", self.required), ("optional", self.optional)):
            if name in table:
                spec = table[name]
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                return spec[0], category, options
        return None

    def input_names(self) -> list[str]:
        return [*self.required, *self.optional]


# --------------------------------------------------------------------------- node bodies


async def _empty_image(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    image = Image(inp["width"], inp["height"], inp["batch_size"], inp["color"])
    return (image,), None


async def _slow_progress(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    image: Image = inp["image"]
    steps = ctx.steps(inp["steps"])
    per_step = ctx.seconds_per_step(inp["seconds_per_step"])
    stall_at = int(inp.get("stall_at_step", 0) or 0)
    preview = None
    if inp.get("send_preview", False):
        preview = encode_jpeg(
            min(image.width, 512), min(image.height, 512), rgb_from_int(image.color)
        )
    for i in range(1, steps + 1):
        if stall_at and i == stall_at:
            await ctx.stall(
                float(inp.get("stall_seconds", 86400.0)),
                bool(inp.get("stall_interruptible", True)),
            )
        else:
            await ctx.sleep(per_step)
        await ctx.progress(i, steps, preview)
    return (image,), None


async def _fail_at_step(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    steps = ctx.steps(inp["steps"])
    per_step = ctx.seconds_per_step(inp["seconds_per_step"])
    for i in range(1, steps + 1):
        if i == inp["fail_at_step"]:
            raise RuntimeError(f"FailAtStep: deliberate failure at step {i}")
        await ctx.sleep(per_step)
        await ctx.progress(i, steps)
    return (inp["image"],), None


async def _save_image(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    results = ctx.save_images(inp["images"], inp["filename_prefix"], "output")
    return (), {"images": results}


async def _preview_image(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    results = ctx.save_images(inp["images"], "ComfyUI", "temp")
    return (), {"images": results}


async def _checkpoint_loader(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    name = inp["ckpt_name"]
    return (f"MODEL({name})", f"CLIP({name})", f"VAE({name})"), None


async def _clip_text_encode(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    return (f"CONDITIONING({len(str(inp['text']))} chars)",), None


async def _empty_latent(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    return (Latent(inp["width"], inp["height"], inp["batch_size"]),), None


async def _ksampler(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    steps = ctx.steps(inp["steps"])
    per_step = ctx.seconds_per_step(SAMPLER_SECONDS_PER_STEP)
    for i in range(1, steps + 1):
        await ctx.sleep(per_step)
        await ctx.progress(i, steps)
    latent = inp["latent_image"]
    return (latent if isinstance(latent, Latent) else Latent(512, 512, 1),), None


async def _vae_decode(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    latent = inp["samples"]
    if not isinstance(latent, Latent):
        latent = Latent(512, 512, 1)
    return (Image(latent.width, latent.height, latent.batch, 0x808080),), None


async def _vae_encode(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    image = inp["pixels"]
    if not isinstance(image, Image):
        image = Image(512, 512, 1, 0)
    return (Latent(image.width, image.height, image.batch),), None


async def _load_image(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    from comfyctl.emulator.images import read_png_info

    width, height, color = 512, 512, 0x808080
    path = annotated_path(str(inp["image"]), ctx.dirs)
    try:
        info = read_png_info(path.read_bytes())
    except OSError:
        info = None
    if info is not None:
        width, height, rgb = info
        color = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
    return (Image(width, height, 1, color), f"MASK({width}x{height})"), None


def annotated_path(name: str, dirs: Directories) -> Path:
    """``folder_paths.get_annotated_filepath``: ``name [output]`` etc., else the input dir."""
    for kind in ("output", "input", "temp"):
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return Path(getattr(dirs, kind)) / name[: -len(suffix)]
    return dirs.input / name


def _image_file_exists(inp: dict[str, Any], folders: Directories) -> bool | str:
    image = str(inp["image"])
    if not annotated_path(image, folders).exists():
        return f"Invalid image file: {image}"
    return True


async def _load_image_mask(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    (_, mask), _ = await _load_image(ctx, inp)
    return (mask,), None


async def _lora_loader(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
    return (inp["model"], inp["clip"]), None


def _loads(kind: str, input_name: str) -> NodeFunction:
    """A loader's body: a stand-in object named after the file."""

    async def run(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
        return (f"{kind}({inp[input_name]})",), None

    return run


def _passes(input_name: str) -> NodeFunction:
    """A body that hands one input on unchanged (model patches, conditioning edits)."""

    async def run(ctx: NodeContext, inp: dict[str, Any]) -> NodeOutput:
        return (inp[input_name],), None

    return run


# --------------------------------------------------------------------------- catalogue

_INT_SIZE = {"default": 512, "min": 1, "max": 16384, "step": 1}
_SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral",
    "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m",
    "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm", "ipndm", "deis", "res_multistep",
    "gradient_estimation", "er_sde", "seeds_2", "seeds_3", "ddim", "uni_pc", "uni_pc_bh2",
]  # fmt: skip
_SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
]  # fmt: skip
_CLIP_TYPES = [
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart",
    "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image",
    "hunyuan_image",
]  # fmt: skip
_TEST_MODULE = "custom_nodes.comfyctl_test_nodes"
#: The seed and sampling inputs KSampler and KSamplerAdvanced share, in their order.
_SEED = [
    "INT",
    {"default": 0, "min": 0, "max": 18446744073709551615, "control_after_generate": True},
]
_SAMPLING: dict[str, list[Any]] = {
    "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
    "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
    "sampler_name": [list(_SAMPLERS)],
    "scheduler": [list(_SCHEDULERS)],
    "positive": ["CONDITIONING"],
    "negative": ["CONDITIONING"],
    "latent_image": ["LATENT"],
}

CATALOGUE: dict[str, NodeSpec] = {
    spec.name: spec
    for spec in (
        NodeSpec(
            name="EmptyImage",
            display_name="EmptyImage",
            category="image",
            run=_empty_image,
            required={
                "width": ["INT", dict(_INT_SIZE)],
                "height": ["INT", dict(_INT_SIZE)],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
                "color": [
                    "INT",
                    {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"},
                ],
            },
            outputs=("IMAGE",),
        ),
        NodeSpec(
            name="SlowProgress",
            display_name="Slow Progress (comfyctl test)",
            category="comfyctl_test",
            description="Pass-through IMAGE node that reports progress slowly (test helper).",
            python_module=_TEST_MODULE,
            run=_slow_progress,
            required={
                "image": ["IMAGE"],
                "steps": ["INT", {"default": 10, "min": 1, "max": 100000}],
                "seconds_per_step": [
                    "FLOAT",
                    {"default": 0.3, "min": 0.0, "max": 3600.0, "step": 0.01},
                ],
            },
            optional={
                "stall_at_step": [
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 100000,
                        "tooltip": "1-based step at which to stall; 0 disables",
                    },
                ],
                "stall_seconds": [
                    "FLOAT",
                    {"default": 86400.0, "min": 0.0, "max": 1000000000.0},
                ],
                "stall_interruptible": ["BOOLEAN", {"default": True}],
                "seed": [
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 18446744073709551615,
                        "tooltip": "change to defeat the execution cache",
                    },
                ],
                "send_preview": [
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "attach a small JPEG preview to each progress update "
                        "(binary WS frames)",
                    },
                ],
            },
            outputs=("IMAGE",),
        ),
        NodeSpec(
            name="FailAtStep",
            display_name="Fail At Step (comfyctl test)",
            category="comfyctl_test",
            description="Raises an exception mid-progress (test helper).",
            python_module=_TEST_MODULE,
            run=_fail_at_step,
            required={
                "image": ["IMAGE"],
                "steps": ["INT", {"default": 5, "min": 1, "max": 100000}],
                "seconds_per_step": [
                    "FLOAT",
                    {"default": 0.2, "min": 0.0, "max": 3600.0, "step": 0.01},
                ],
                "fail_at_step": ["INT", {"default": 3, "min": 1, "max": 100000}],
            },
            outputs=("IMAGE",),
        ),
        NodeSpec(
            name="SaveImage",
            display_name="Save Image",
            category="image",
            description="Saves the input images to your ComfyUI output directory.",
            run=_save_image,
            required={
                "images": ["IMAGE", {"tooltip": "The images to save."}],
                "filename_prefix": [
                    "STRING",
                    {
                        "default": "ComfyUI",
                        "tooltip": "The prefix for the file to save. This may include "
                        "formatting information such as %date:yyyy-MM-dd% or "
                        "%Empty Latent Image.width% to include values from nodes.",
                    },
                ],
            },
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output_node=True,
        ),
        NodeSpec(
            name="PreviewImage",
            display_name="Preview Image",
            category="image",
            description="Saves the input images to your ComfyUI output directory.",
            run=_preview_image,
            required={"images": ["IMAGE"]},
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output_node=True,
        ),
        NodeSpec(
            name="CheckpointLoaderSimple",
            display_name="Load Checkpoint",
            category="loaders",
            description="Loads a diffusion model checkpoint, diffusion models are used to "
            "denoise latents.",
            run=_checkpoint_loader,
            required={
                "ckpt_name": [
                    FolderFiles("checkpoints"),
                    {"tooltip": "The name of the checkpoint (model) to load."},
                ]
            },
            outputs=("MODEL", "CLIP", "VAE"),
            output_tooltips=(
                "The model used for denoising latents.",
                "The CLIP model used for encoding text prompts.",
                "The VAE model used for encoding and decoding images to and from latent space.",
            ),
        ),
        NodeSpec(
            name="CLIPTextEncode",
            display_name="CLIP Text Encode (Prompt)",
            category="conditioning",
            description="Encodes a text prompt using a CLIP model into an embedding that can "
            "be used to guide the diffusion model towards generating specific images.",
            run=_clip_text_encode,
            required={
                "text": [
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "tooltip": "The text to be encoded.",
                    },
                ],
                "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}],
            },
            outputs=("CONDITIONING",),
        ),
        NodeSpec(
            name="EmptyLatentImage",
            display_name="Empty Latent Image",
            category="latent",
            description="Create a new batch of empty latent images to be denoised via sampling.",
            run=_empty_latent,
            required={
                "width": ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}],
                "height": ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            },
            outputs=("LATENT",),
        ),
        NodeSpec(
            name="KSampler",
            display_name="KSampler",
            category="sampling",
            description="Uses the provided model, positive and negative conditioning to "
            "denoise the latent image.",
            run=_ksampler,
            required={
                "model": ["MODEL"],
                "seed": _SEED,
                **_SAMPLING,
                "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
            },
            outputs=("LATENT",),
        ),
        NodeSpec(
            name="VAEDecode",
            display_name="VAE Decode",
            category="latent",
            description="Decodes latent images back into pixel space images.",
            run=_vae_decode,
            required={"samples": ["LATENT"], "vae": ["VAE"]},
            outputs=("IMAGE",),
        ),
        NodeSpec(
            name="VAEEncode",
            display_name="VAE Encode",
            category="latent",
            run=_vae_encode,
            required={"pixels": ["IMAGE"], "vae": ["VAE"]},
            outputs=("LATENT",),
        ),
        NodeSpec(
            name="LoadImage",
            display_name="Load Image",
            category="image",
            run=_load_image,
            required={"image": [INPUT_FILES, {"image_upload": True}]},
            outputs=("IMAGE", "MASK"),
            validate_inputs=_image_file_exists,
            validate_args=("image",),
        ),
        NodeSpec(
            name="LoadImageMask",
            display_name="Load Image (as Mask)",
            category="mask",
            run=_load_image_mask,
            required={
                "image": [FolderFiles("input"), {"image_upload": True}],
                "channel": [["alpha", "red", "green", "blue"]],
            },
            outputs=("MASK",),
            validate_inputs=_image_file_exists,
            validate_args=("image",),
        ),
        NodeSpec(
            name="LoraLoader",
            display_name="Load LoRA",
            category="loaders",
            description="LoRAs are used to modify diffusion and CLIP models, altering the way "
            "in which latents are denoised such as applying styles.",
            run=_lora_loader,
            required={
                "model": ["MODEL"],
                "clip": ["CLIP"],
                "lora_name": [FolderFiles("loras")],
                "strength_model": [
                    "FLOAT",
                    {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01},
                ],
                "strength_clip": [
                    "FLOAT",
                    {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01},
                ],
            },
            outputs=("MODEL", "CLIP"),
        ),
        # Core nodes the frontend's workflow templates use most, INPUT_TYPES as in
        # ComfyUI 0.3.64 (nodes.py, comfy_extras/nodes_custom_sampler.py,
        # nodes_model_advanced.py, nodes_sd3.py, nodes_flux.py).
        NodeSpec(
            name="KSamplerAdvanced",
            display_name="KSampler (Advanced)",
            category="sampling",
            run=_ksampler,
            required={
                "model": ["MODEL"],
                "add_noise": [["enable", "disable"]],
                "noise_seed": _SEED,
                **_SAMPLING,
                "start_at_step": ["INT", {"default": 0, "min": 0, "max": 10000}],
                "end_at_step": ["INT", {"default": 10000, "min": 0, "max": 10000}],
                "return_with_leftover_noise": [["disable", "enable"]],
            },
            outputs=("LATENT",),
        ),
        NodeSpec(
            name="VAELoader",
            display_name="Load VAE",
            category="loaders",
            run=_loads("VAE", "vae_name"),
            # taesd* appear only with their vae_approx files, which the emulator has none of.
            required={"vae_name": [FolderFiles("vae", extra=("pixel_space",))]},
            outputs=("VAE",),
        ),
        NodeSpec(
            name="UNETLoader",
            display_name="Load Diffusion Model",
            category="advanced/loaders",
            run=_loads("MODEL", "unet_name"),
            required={
                "unet_name": [FolderFiles("diffusion_models")],
                "weight_dtype": [["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]],
            },
            outputs=("MODEL",),
        ),
        NodeSpec(
            name="CLIPLoader",
            display_name="Load CLIP",
            category="advanced/loaders",
            run=_loads("CLIP", "clip_name"),
            required={
                "clip_name": [FolderFiles("text_encoders")],
                "type": [list(_CLIP_TYPES)],
            },
            optional={"device": [["default", "cpu"], {"advanced": True}]},
            outputs=("CLIP",),
        ),
        NodeSpec(
            name="DualCLIPLoader",
            display_name="DualCLIPLoader",
            category="advanced/loaders",
            run=_loads("CLIP", "clip_name1"),
            required={
                "clip_name1": [FolderFiles("text_encoders")],
                "clip_name2": [FolderFiles("text_encoders")],
                "type": [["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]],
            },
            optional={"device": [["default", "cpu"], {"advanced": True}]},
            outputs=("CLIP",),
        ),
        NodeSpec(
            name="LoraLoaderModelOnly",
            display_name="LoraLoaderModelOnly",
            category="loaders",
            run=_passes("model"),
            required={
                "model": ["MODEL"],
                "lora_name": [FolderFiles("loras")],
                "strength_model": [
                    "FLOAT",
                    {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01},
                ],
            },
            outputs=("MODEL",),
        ),
        NodeSpec(
            name="CLIPSetLastLayer",
            display_name="CLIP Set Last Layer",
            category="conditioning",
            run=_passes("clip"),
            required={
                "clip": ["CLIP"],
                "stop_at_clip_layer": ["INT", {"default": -1, "min": -24, "max": -1, "step": 1}],
            },
            outputs=("CLIP",),
        ),
        NodeSpec(
            name="ConditioningZeroOut",
            display_name="ConditioningZeroOut",
            category="advanced/conditioning",
            run=_passes("conditioning"),
            required={"conditioning": ["CONDITIONING"]},
            outputs=("CONDITIONING",),
        ),
        NodeSpec(
            name="KSamplerSelect",
            display_name="KSamplerSelect",
            category="sampling/custom_sampling/samplers",
            python_module="comfy_extras.nodes_custom_sampler",
            run=_loads("SAMPLER", "sampler_name"),
            required={"sampler_name": [list(_SAMPLERS)]},
            outputs=("SAMPLER",),
        ),
        # ModelSamplingAuraFlow subclasses ModelSamplingSD3 in ComfyUI: only the default
        # shift differs.
        *(
            NodeSpec(
                name=name,
                display_name=name,
                category="advanced/model",
                python_module="comfy_extras.nodes_model_advanced",
                run=_passes("model"),
                required={
                    "model": ["MODEL"],
                    "shift": ["FLOAT", {"default": shift, "min": 0.0, "max": 100.0, "step": 0.01}],
                },
                outputs=("MODEL",),
            )
            for name, shift in (("ModelSamplingSD3", 3.0), ("ModelSamplingAuraFlow", 1.73))
        ),
        NodeSpec(
            name="EmptySD3LatentImage",
            display_name="EmptySD3LatentImage",
            category="latent/sd3",
            python_module="comfy_extras.nodes_sd3",
            run=_empty_latent,
            required={
                "width": ["INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}],
                "height": ["INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            },
            outputs=("LATENT",),
        ),
        NodeSpec(
            name="FluxGuidance",
            display_name="FluxGuidance",
            category="advanced/conditioning/flux",
            python_module="comfy_extras.nodes_flux",
            run=_passes("conditioning"),
            required={
                "conditioning": ["CONDITIONING"],
                "guidance": ["FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1}],
            },
            outputs=("CONDITIONING",),
        ),
    )
}


def folder_files(source: FolderFiles, folders: Directories) -> list[str]:
    """The options of a folder combo, sorted as ComfyUI sorts them."""
    import mimetypes

    if source.folder == "input":
        try:
            names = [n for n in os.listdir(folders.input) if (folders.input / n).is_file()]
        except OSError:
            return []
        if source.content_types:
            names = [
                n
                for n in names
                if (mimetypes.guess_type(n, strict=False)[0] or "").split("/")[0]
                in source.content_types
            ]
        return sorted(names)
    root = folders.models / source.folder
    found = []
    for dirpath, _, files in os.walk(root, followlinks=True):
        for name in files:
            if name.endswith(MODEL_EXTENSIONS):
                found.append(
                    os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                )
    return sorted(found) + list(source.extra)


def combo_options(first: Any, folders: Directories | None) -> Any:
    """An input spec's first element as the server shows it (folder combos listed)."""
    if isinstance(first, FolderFiles):
        return folder_files(first, folders) if folders is not None else []
    return first


def _render_table(table: dict[str, list[Any]], folders: Directories) -> dict[str, list[Any]]:
    return {name: [combo_options(spec[0], folders), *spec[1:]] for name, spec in table.items()}


def object_info(spec: NodeSpec, folders: Directories) -> dict[str, Any]:
    """The ``/object_info`` entry of one node, keys in the order ComfyUI 0.3.64 sends."""
    inputs: dict[str, Any] = {}
    order: dict[str, list[str]] = {}
    if spec.required:
        inputs["required"] = _render_table(spec.required, folders)
        order["required"] = list(spec.required)
    if spec.optional:
        inputs["optional"] = _render_table(spec.optional, folders)
        order["optional"] = list(spec.optional)
    if spec.hidden:
        inputs["hidden"] = dict(spec.hidden)
        order["hidden"] = list(spec.hidden)
    info: dict[str, Any] = {
        "input": inputs,
        "input_order": order,
        "output": list(spec.outputs),
        "output_is_list": [False] * len(spec.outputs),
        "output_name": list(spec.output_names or spec.outputs),
        "name": spec.name,
        "display_name": spec.display_name,
        "description": spec.description,
        "python_module": spec.python_module,
        "category": spec.category,
        "output_node": spec.output_node,
    }
    if spec.output_tooltips is not None:
        info["output_tooltips"] = list(spec.output_tooltips)
    return info
