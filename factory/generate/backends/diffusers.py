"""The production generator: any diffusers text-to-image pipeline from a local folder or the HF cache.

::

    gen = DiffusersGenerator.load("models/sd15", SamplerConfig(steps=30, scheduler="dpm"))
    pngs = gen.generate(requests)        # PNG bytes, one per request, in request order
    record = gen.describe()              # the provenance ``generator`` record

Loading never downloads: the path is a local pipeline folder (``save_pretrained`` layout, with a
``model_index.json``) or a hub id that is already in the Hugging Face cache, and the pipeline is
loaded with ``DiffusionPipeline.from_pretrained(..., local_files_only=True)``.

Reproducibility. Every image gets its own CPU ``torch.Generator`` seeded with the request's seed, so
its initial latents (and the noise of stochastic schedulers such as DDPM and Euler) depend on that
seed alone, whatever else is in the batch. On CUDA the latents are drawn on the CPU and moved to the
GPU (diffusers does this for CPU generators), so a seed means the same starting noise on any machine.

The rest is floating point, and kernels pick their algorithm by tensor shape: on the CPU, oneDNN
convolutions give a batch of one slightly different results (~1e-7) from a batch of several, which
is enough to flip a rounded pixel. So every pipeline call has the same shape: requests are cut into
micro-batches of exactly ``sampler.batch_size``, and a short last batch is padded with copies of its
last request whose images are thrown away. An image's bytes then depend only on its request and the
settings (``batch_size`` included, so :meth:`DiffusersGenerator.describe` records it), not on its
neighbours or its position: generated alone or among others, the bytes are the same (tested on the
CPU in float32). The cost is up to ``batch_size - 1`` wasted images per :meth:`generate` call.
On a GPU the same padding keeps shapes fixed, but bit-exactness there also needs deterministic
kernels (no ``cudnn.benchmark``) and is not tested here.

Compilation (``sampler.compile``, CUDA only). The UNet, where nearly all the time goes, is wrapped in
``torch.compile(mode="reduce-overhead")``: Inductor kernels replayed as CUDA graphs, which cut the launch
overhead of its hundreds of small kernels. Every call has the same shape (the fixed micro-batches above), so
one graph serves the whole run (``max-autotune`` would spend minutes more tuning kernels). The first batch
pays the compilation, a minute or more for SD 1.5 (``bench/gpu.py`` reports it as the warm-up), so it is for
long runs. On the CPU it is refused (a FactoryError) rather than ignored: a record must not say
``compile`` where nothing was compiled, and Inductor's CPU code gains little here. Compiled kernels round
differently from eager ones, so :meth:`DiffusersGenerator.describe` records ``compile`` (only when on).

Safety checker. Pipelines that have one (Stable Diffusion 1.x/2.x) are loaded with
``safety_checker=None``: the checker replaces images it flags with black squares, which would
silently put black images under real labels into a training set, and it costs a second model per
batch. Filtering what gets kept is the curation stage's job. Use this backend only with models
whose licence permits that.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from factory.core.errors import FactoryError
from factory.generate.backends.base import GenRequest, SamplerConfig

log = logging.getLogger(__name__)

# sampler.scheduler -> diffusers scheduler class name; each is built with
# ``from_config(pipe.scheduler.config)`` so the model's own beta schedule and offsets are kept.
SCHEDULER_CLASSES = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
COMPILE_MODE = "reduce-overhead"  # sampler.compile: torch.compile(pipe.unet, mode=...); see the module docstring
_HASH_CHUNK = 1 << 20


def weights_sha256(folder: Path) -> str:
    """One sha256 over every weight file (``*.safetensors``, ``*.bin``) under ``folder``.

    Files are taken in sorted order of their path relative to ``folder`` (POSIX form); for each,
    the hash is fed ``<relative path> NUL <size in bytes> NUL <file bytes>``. Symlinks are
    followed (the HF cache stores snapshot files as links to blobs); anything under a hidden
    directory (``.cache``, ``.git``) is skipped. Config files are not part of the hash. Every
    weight file counts, including ones the pipeline does not load (e.g. an unused safety
    checker, or fp16 variants next to fp32 weights).
    """
    folder = Path(folder)
    files = sorted(
        (p.relative_to(folder).as_posix(), p)
        for p in folder.rglob("*")
        if p.suffix in WEIGHT_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1])
    )
    if not files:
        raise FactoryError(f"{folder}: no weight files (*.safetensors, *.bin) to fingerprint")
    h = hashlib.sha256()
    for rel, p in files:
        h.update(rel.encode("utf-8") + b"\0" + str(p.stat().st_size).encode("ascii") + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def resolve_pipeline_folder(model: str | Path) -> Path:
    """The local folder holding pipeline ``model``: the folder itself, or its HF cache snapshot.

    Never downloads. Raises FactoryError naming ``model`` when it is neither.
    """
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FactoryError(f"{model}: not a folder; give a diffusers pipeline folder "
                               "(with model_index.json) or a model id in the Hugging Face cache")
        folder = path
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(str(model), local_files_only=True))
        except Exception:  # invalid repo id, not cached, ...: all mean "not found here"
            raise FactoryError(
                f"{model}: no such folder, and not a model id in the local Hugging Face cache "
                "(models are never downloaded; fetch it first, e.g. `hf download <id>`)") from None
    if not (folder / "model_index.json").is_file():
        raise FactoryError(f"{model}: not a diffusers pipeline (no model_index.json in {folder})")
    return folder


def _read_model_index(model: str | Path, folder: Path) -> dict[str, Any]:
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FactoryError(f"{model}: unreadable model_index.json ({exc})") from None
    if not isinstance(index, dict) or "_class_name" not in index:
        raise FactoryError(f"{model}: not a diffusers pipeline (model_index.json has no _class_name)")
    return index


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide the 'Loading pipeline components' / 'Loading weights' bars; restore the prior state."""
    import diffusers.utils.logging as dlog
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as tlog

    d_on, t_on = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    hub_on = not hub_utils.are_progress_bars_disabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()  # also turns off huggingface_hub's bars
    try:
        yield
    finally:
        if d_on:
            dlog.enable_progress_bar()
        if t_on:
            tlog.enable_progress_bar()
        if hub_on:
            hub_utils.enable_progress_bars()
        else:
            hub_utils.disable_progress_bars()


def _default_size(pipe: Any, model: str | Path) -> tuple[int, int]:
    """The pipeline's native (height, width): UNet ``sample_size`` (or ``default_sample_size``)
    times the VAE scale factor, as the pipelines themselves compute it."""
    scale = getattr(pipe, "vae_scale_factor", None)
    unet = getattr(pipe, "unet", None)
    size = getattr(getattr(unet, "config", None), "sample_size", None)
    if size is None:
        size = getattr(pipe, "default_sample_size", None)
    if size is None or scale is None:
        raise FactoryError(f"{model}: cannot tell the pipeline's native image size; "
                           "set generate.height and generate.width")
    if isinstance(size, int):
        return size * scale, size * scale
    return int(size[0]) * scale, int(size[1]) * scale


def _png(image: Any) -> bytes:
    """Encode a PIL image as PNG with fixed settings and no metadata (no text chunks, no time)."""
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


class DiffusersGenerator:
    """A diffusers text-to-image pipeline behind the :class:`~factory.generate.backends.base.Generator`
    interface. Build it with :meth:`load`."""

    def __init__(self, pipe: Any, sampler: SamplerConfig, *, model: str, weights_sha256: str,
                 device: str, dtype: str, height: int, width: int) -> None:
        self.pipe = pipe
        self.sampler = sampler
        self.model = model
        self.weights_sha256 = weights_sha256
        self.device = device
        self.dtype = dtype  # "float32", "float16" or "bfloat16"
        self.height = height
        self.width = width

    @classmethod
    def load(cls, path: str | Path, sampler: SamplerConfig) -> DiffusersGenerator:
        """Load the pipeline at ``path`` (folder or cached hub id) set up for ``sampler``.

        Raises FactoryError naming ``path`` when it is missing, not a pipeline, fails to load, or
        cannot honour ``sampler`` (e.g. a negative prompt for a pipeline without one, or a SIMS
        ``negative_model``, which only the embedded backend has).
        """
        import diffusers
        import torch
        from diffusers import DiffusionPipeline

        if sampler.negative_model is not None:
            raise FactoryError(f"negative_model (SIMS negative guidance) is for the embedded backend only; the "
                               f"diffusers backend takes negative_prompt: set negative_model to null "
                               f"(got {sampler.negative_model!r})")
        if sampler.negative_prompt is not None and sampler.guidance_scale <= 1:
            raise FactoryError(
                f"negative_prompt has no effect unless guidance_scale > 1 (classifier-free "
                f"guidance is off); got guidance_scale {sampler.guidance_scale}")
        device = _resolve_device(sampler.device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise FactoryError(f"device must be cpu or auto when CUDA is not available; got {device!r}")
        dtype = _resolve_dtype(sampler.dtype, device)
        model = str(path)
        folder = resolve_pipeline_folder(path)
        index = _read_model_index(model, folder)
        if sampler.compile and not device.startswith("cuda"):
            raise FactoryError(f"compile (torch.compile of the UNet) is for CUDA devices only; the device is "
                               f"{device!r}: set generate.compile to false")
        if device == "cpu" and dtype == torch.float16:
            log.warning("float16 on the CPU is slow and not supported by every layer; "
                        "use dtype float32 or auto")

        kwargs: dict[str, Any] = {}
        if "safety_checker" in index:  # see the module docstring
            kwargs["safety_checker"] = None
            if "requires_safety_checker" in index:
                kwargs["requires_safety_checker"] = False
        try:
            with _quiet_loading(), warnings.catch_warnings():
                # newer diffusers read ``dtype`` and warn on ``torch_dtype``, which every version reads.
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = DiffusionPipeline.from_pretrained(
                    str(folder), local_files_only=True, torch_dtype=dtype, **kwargs)
        except Exception as exc:  # missing component files, bad configs, missing libraries ...
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FactoryError(f"{model}: cannot load the diffusers pipeline ({reason})") from exc

        call_params = inspect.signature(pipe.__call__).parameters
        for name in ("prompt", "guidance_scale", "num_inference_steps", "height", "width", "generator"):
            if name not in call_params:
                raise FactoryError(f"{model}: {type(pipe).__name__} is not a text-to-image pipeline "
                                   f"this backend can drive (its __call__ takes no {name!r})")
        if sampler.negative_prompt is not None and "negative_prompt" not in call_params:
            raise FactoryError(f"{model}: {type(pipe).__name__} takes no negative prompt; "
                               "set generate.negative_prompt to null")

        scheduler_cls = getattr(diffusers, SCHEDULER_CLASSES[sampler.scheduler])
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        if sampler.compile:  # see the module docstring
            pipe.unet = torch.compile(pipe.unet, mode=COMPILE_MODE)

        native_h, native_w = (None, None)
        if sampler.height is None or sampler.width is None:
            native_h, native_w = _default_size(pipe, model)
        height = sampler.height if sampler.height is not None else native_h
        width = sampler.width if sampler.width is not None else native_w
        return cls(pipe, sampler, model=model, weights_sha256=weights_sha256(folder), device=device,
                   dtype=str(dtype).removeprefix("torch."), height=height, width=width)

    @property
    def classes(self) -> None:
        """Any class: the prompt text says what to draw."""
        return None

    @property
    def attributes(self) -> None:
        """Any attribute: the prompt text says it."""
        return None

    @property
    def parents(self) -> list[dict[str, Any]]:
        """A pretrained pipeline: the datasets it was trained on are not known here."""
        return []

    @property
    def generation(self) -> int:
        return 1

    def describe(self) -> dict[str, Any]:
        s = self.sampler
        return {
            "backend": "diffusers",
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "scheduler": s.scheduler,
            "steps": s.steps,
            "guidance_scale": s.guidance_scale,
            "negative_guidance": s.negative_prompt,
            "height": self.height,
            "width": self.width,
            "dtype": self.dtype,
            "pipeline": type(self.pipe).__name__,
            "batch_size": s.batch_size,  # fixed micro-batch shape; part of what makes the bytes
            # compiled kernels round differently: recorded when on (absent when off, as before the option)
            **({"compile": COMPILE_MODE} if s.compile else {}),
        }

    def generate(self, requests: Sequence[GenRequest]) -> list[bytes]:
        """PNG bytes, one per request, in request order.

        Runs the pipeline on micro-batches of exactly ``sampler.batch_size`` prompts (the last one
        padded, see the module docstring), so each image's bytes are independent of the others.
        """
        out: list[bytes] = []
        size = self.sampler.batch_size
        for start in range(0, len(requests), size):
            batch = list(requests[start:start + size])
            padded = batch + [batch[-1]] * (size - len(batch))
            images = self._images(padded)
            out.extend(_png(im) for im in images[:len(batch)])
        return out

    def _images(self, batch: Sequence[GenRequest]) -> list[Any]:
        import torch

        s = self.sampler
        kwargs: dict[str, Any] = {}
        if s.negative_prompt is not None:
            kwargs["negative_prompt"] = [s.negative_prompt] * len(batch)
        result = self.pipe(
            prompt=[r.text for r in batch],
            guidance_scale=s.guidance_scale,
            num_inference_steps=s.steps,
            height=self.height,
            width=self.width,
            # One CPU generator per image: its latents depend on its own seed only.
            generator=[torch.Generator("cpu").manual_seed(r.seed) for r in batch],
            output_type="pil",
            **kwargs,
        )
        images = list(result.images)
        if len(images) != len(batch):
            raise FactoryError(f"{self.model}: pipeline returned {len(images)} images for "
                               f"{len(batch)} prompts")
        return images

