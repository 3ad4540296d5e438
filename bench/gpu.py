"""GPU throughput of the production backends: the ``generate`` stage next to a bare diffusers pipeline call,
and the open_clip scorer next to a bare ``encode_image``, on full-size models with random weights.

    python bench/gpu.py [--out gpu.json] [--batch-sizes 1,4,8,16] [--steps 20] [--budget-s 420]
    python bench/gpu.py --smoke    # the same code paths on the CPU with tiny models, in seconds (tests run it)

Generation. Stable Diffusion 1.5's architecture (``factory/generate/sd_archs/sd15.json``: UNet 860 M, VAE 84 M,
CLIP ViT-L/14 text encoder 123 M parameters) with seeded random weights, built on the GPU, saved in float16 to a
temporary folder and loaded back by the diffusers backend as a user's model folder would be (throughput does not
depend on the weights' values). For each batch size, eager and with ``generate.compile`` (torch.compile of the
UNet), it times the stage (:func:`factory.generate.tasks.generate` on a plan of ``batches x batch_size`` prompts:
PNG encoding, provenance, hashing and tar shards included) against a bare
``pipe(prompt=[...], num_inference_steps=..., guidance_scale=7.5, height=512, width=512, generator=[...])``
with the same prompts, seeds and batch size, on the very pipeline object the stage loaded (same weights,
scheduler and compiled UNet). Runs alternate stage, bare, stage, bare; the best of each is kept; the target is
stage/bare >= 0.95. Loading and the first batch (which pays the compilation) are timed apart and excluded.
Random weights draw noise-like images, the worst case for the stage's PNG encoding (``shard_kb_per_image``
in the summary says how large they came out; noise at 512 px is about 770 KB, real photos usually far less).

Scoring. open_clip ViT-B-32 with random weights, saved as a checkpoint and loaded through
``load_scorer("open_clip", ...)``: the factory path ``scorer.embed_images(pil_images)`` (preprocessing in this
process, batches of ``batch_size``, embeddings back to the CPU) against a bare ``model.encode_image`` on the same
batches preprocessed beforehand; the preprocessing alone is timed too, as it is what separates the two.

The whole run stays under 8 minutes (the defaults are sized for an H100/H200-class GPU): no configuration
starts unless its expected time fits ``--budget-s`` (counted from the start of the process), and at
``--deadline-s`` whatever runs is cut short; skipped and cut configurations are printed and recorded. Compiled
runs come last (largest batch first), since each pays its own compilation (the budget expects up to
``COMPILE_ALLOWANCE_S``).

Prints a table; ``--out FILE`` also writes a JSON summary. Exit codes: 0 done (with skips, if any, noted);
2 no CUDA device (without --smoke) or bad arguments.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from the start of the process, imports included

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from factory.config import SCHEDULERS  # noqa: E402

GUIDANCE = 7.5
COMPILE_ALLOWANCE_S = 120.0  # what a compiled configuration's first batch may take beyond an eager one's
SETTINGS = {  # the full run (CUDA) and --smoke (CPU): the same code paths
    "gpu": {"arch": "sd15", "size": 512, "dtype": "float16", "device": "cuda", "batch_sizes": (1, 4, 8, 16),
            "batches": 3, "repeats": 2, "steps": 20, "clip_arch": "ViT-B-32", "clip_batch_sizes": (32, 128, 512),
            "clip_batches": 3},
    "smoke": {"arch": "tiny", "size": 32, "dtype": "float32", "device": "cpu", "batch_sizes": (1, 2),
              "batches": 2, "repeats": 1, "steps": 2, "clip_arch": "photo32", "clip_batch_sizes": (4, 16),
              "clip_batches": 2},
}
TEMPLATES = ("a photo of a {class_name}", "a close-up photo of a {class_name} in daylight",
             "a blurry photo of a {class_name} on a table", "a bright photo of the large {class_name}")


class Deadline(BaseException):
    """Raised by the alarm at --deadline-s (a BaseException: library code's ``except Exception`` lets it pass)."""


def elapsed() -> float:
    return time.monotonic() - T0


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- generation -------------------------------------------------------------------------------------------


def build_model(folder: Path, arch: str, dtype: str, device: str) -> dict[str, float]:
    """Random weights of ``arch`` built on ``device`` (fast on a GPU), saved in ``dtype`` to ``folder``."""
    import torch

    from factory.generate.random_sd import build_pipeline

    t = time.perf_counter()
    pipe = build_pipeline(arch, seed=0, device=device)  # float32
    if dtype != "float32":
        pipe = pipe.to(getattr(torch, dtype))
    sync(device)
    built = time.perf_counter() - t
    t = time.perf_counter()
    pipe.save_pretrained(folder)
    saved = time.perf_counter() - t
    params = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("unet", "vae", "text_encoder")}
    del pipe
    gc.collect()
    return {"build_s": round(built, 2), "save_s": round(saved, 2), "parameters": params}


def write_bench_plan(path: Path, n: int) -> list[Any]:
    """A plan of ``n`` rows (one class, varied prompts, one seed per row); returns its rows."""
    from factory.config import PlanConfig
    from factory.generate.plans import build_plan, write_plan

    plan = build_plan(PlanConfig(images_per_class=n, images_per_prompt=1, templates=TEMPLATES), ["golden retriever"])
    write_plan(plan, path)
    return plan.rows


def bare_pipeline(pipe: Any, rows: list[Any], cfg: Any) -> float:
    """Seconds for ``pipe(...)`` over ``rows`` in batches of ``cfg.batch_size`` with the stage's settings."""
    import torch

    sync(cfg.device)
    t = time.perf_counter()
    for start in range(0, len(rows), cfg.batch_size):
        batch = rows[start:start + cfg.batch_size]
        pipe(prompt=[r.text for r in batch], num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
             height=cfg.height, width=cfg.width,
             generator=[torch.Generator("cpu").manual_seed(r.seed) for r in batch])  # as the backend seeds
    sync(cfg.device)
    return time.perf_counter() - t


def time_generate(cfg: Any, tmp: Path, batches: int, repeats: int) -> dict[str, Any]:
    """Stage vs bare images/s for one configuration (``cfg``: a GenerateConfig)."""
    import torch

    from factory.generate.tasks import cached_generator, generate

    bs, n = cfg.batch_size, cfg.batch_size * batches
    tag = f"b{bs}{'c' if cfg.compile else ''}"
    plan_path = tmp / f"plan-{tag}.jsonl"
    rows = write_bench_plan(plan_path, n)
    cfg = cfg.replace(shard_size=n)
    if cfg.compile:
        torch._dynamo.reset()  # each configuration compiles its own UNet afresh
    t = time.perf_counter()
    gen = cached_generator(cfg.generator)  # the stage's own loader and cache: generate() below reuses it
    load_s = time.perf_counter() - t
    warmup_s = bare_pipeline(gen.pipe, rows[:bs], cfg)  # first batch: CUDA context, kernels, compilation
    write_bench_plan(tmp / f"plan-{tag}-warm.jsonl", bs)  # and the stage's first batch (its imports, caches)
    generate(tmp / f"plan-{tag}-warm.jsonl", tmp / f"out-{tag}-warm", cfg.replace(shard_size=bs))
    shutil.rmtree(tmp / f"out-{tag}-warm")
    stage, bare, kb = [], [], 0.0
    for r in range(repeats):
        out = tmp / f"out-{tag}-{r}"
        t = time.perf_counter()
        summary = generate(plan_path, out, cfg)
        stage.append(n / (time.perf_counter() - t))
        kb = sum(s["bytes"] for s in summary.index["shards"]) / n / 1024
        shutil.rmtree(out)
        bare.append(n / bare_pipeline(gen.pipe, rows, cfg))
    del gen
    return {"batch_size": bs, "compile": cfg.compile, "images": n, "repeats": repeats,
            "load_s": round(load_s, 2), "warmup_s": round(warmup_s, 2),
            "stage_images_per_s": round(max(stage), 3), "bare_images_per_s": round(max(bare), 3),
            "ratio": round(max(stage) / max(bare), 3), "shard_kb_per_image": round(kb, 1),
            "all_stage": [round(x, 3) for x in stage], "all_bare": [round(x, 3) for x in bare]}


# -- scoring -----------------------------------------------------------------------------------------------


def time_scoring(weights: Path, name: str, device: str, bs: int, n: int, size: int, repeats: int) -> dict[str, Any]:
    """Factory ``embed_images`` vs bare ``encode_image`` images/s at batch size ``bs`` over ``n`` images."""
    import numpy as np
    import torch
    from PIL import Image

    from factory.curate.scorers import load_scorer

    scorer = load_scorer("open_clip", name, weights, device=device, batch_size=bs)
    rng = np.random.default_rng(0)
    pool = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(8)]
    images = [pool[i % len(pool)] for i in range(n)]
    t = time.perf_counter()
    tensors = [torch.stack([scorer.preprocess(im) for im in images[s:s + bs]]) for s in range(0, n, bs)]
    prep = n / (time.perf_counter() - t)

    @torch.inference_mode()
    def bare() -> float:
        sync(device)
        t = time.perf_counter()
        for x in tensors:
            scorer.model.encode_image(x.to(device), normalize=True).float().cpu()
        sync(device)
        return n / (time.perf_counter() - t)

    def factory() -> float:
        sync(device)
        t = time.perf_counter()
        scorer.embed_images(images)
        sync(device)
        return n / (time.perf_counter() - t)

    bare()  # warm-up
    fac, bar = [], []
    for _ in range(repeats):
        fac.append(factory())
        bar.append(bare())
    return {"batch_size": bs, "images": n, "factory_images_per_s": round(max(fac), 1),
            "bare_images_per_s": round(max(bar), 1), "preprocess_images_per_s": round(prep, 1),
            "ratio": round(max(fac) / max(bar), 3)}


# -- the run -----------------------------------------------------------------------------------------------


class Guard:
    """The time budget: runs a configuration only if its expected time still fits, and records its row or why
    it has none (skipped: over budget, or refused by the factory; failed: an error, where ``tolerate``)."""

    def __init__(self, budget_s: float, notes: list[str]) -> None:
        self.budget_s = budget_s
        self.notes = notes

    def run(self, kind: str, results: list[dict[str, Any]], label: dict[str, Any], expected_s: float,
            fn: Callable[[], dict[str, Any]], tolerate: bool = False) -> None:
        from factory.core.errors import FactoryError

        what = f"{kind}: " + ", ".join(f"{k} {v}" for k, v in label.items())
        if elapsed() + expected_s > self.budget_s:
            self.notes.append(f"skipped ({what}): {elapsed():.0f}s used, about {expected_s:.0f}s more would pass "
                              f"the {self.budget_s:.0f}s budget")
            results.append({**label, "skipped": self.notes[-1]})
            print(self.notes[-1], flush=True)
            return
        try:
            row = fn()
        except FactoryError as exc:  # refused by the factory (compile on the CPU): what a user would see
            results.append({**label, "skipped": str(exc)})
            print(f"skipped ({what}): {exc}", flush=True)
            return
        except Exception as exc:  # compilation can fail where the eager path works: record it, go on
            if not tolerate:
                raise
            reason = f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0]
            results.append({**label, "failed": reason})
            self.notes.append(f"failed ({what}): {reason}")
            print(self.notes[-1], flush=True)
            return
        results.append(row)
        print(f"done ({what}) at {elapsed():.0f}s", flush=True)


def run_all(s: dict[str, Any], summary: dict[str, Any], guard: Guard, tmp: Path, compile_too: bool) -> None:
    """Build the models, then time: eager generation per batch size, scoring, compiled generation."""
    from factory.config import GenerateConfig
    from factory.curate.scorers.random_clip import build_open_clip, model_name

    device, folder = s["device"], tmp / s["arch"]
    summary["model"] = build_model(folder, s["arch"], s["dtype"], device)
    print(f"built {s['arch']} {summary['model']['parameters']} in {summary['model']['build_s']}s, "
          f"saved in {summary['model']['save_s']}s", flush=True)
    base = GenerateConfig(backend="diffusers", model=str(folder), steps=s["steps"], scheduler=s["scheduler"],
                          guidance_scale=GUIDANCE, dtype=s["dtype"], device=device, height=s["size"],
                          width=s["size"], name="bench")

    def gen(bs: int, compile: bool) -> Callable[[], dict[str, Any]]:
        return lambda: time_generate(base.replace(batch_size=bs, compile=compile), tmp, s["batches"], s["repeats"])

    eager_s: dict[int, float] = {}
    for bs in s["batch_sizes"]:
        t = time.monotonic()
        expected = max(eager_s.values(), default=0.0)  # about as long as the previous batch size took
        guard.run("generate", summary["generate"], {"batch_size": bs, "compile": False}, expected, gen(bs, False))
        eager_s[bs] = time.monotonic() - t
    weights = build_open_clip(tmp / "clip", s["clip_arch"])
    for bs in s["clip_batch_sizes"]:
        guard.run("scoring", summary["scoring"], {"batch_size": bs}, 0.0,
                  lambda bs=bs: time_scoring(weights, model_name(s["clip_arch"]), device, bs, bs * s["clip_batches"],
                                             s["size"], s["repeats"]))
    if compile_too:
        for bs in sorted(s["batch_sizes"], reverse=True):  # the largest batch, production's, first
            expected = eager_s.get(bs, 0.0) + (COMPILE_ALLOWANCE_S if device == "cuda" else 0.0)
            guard.run("generate", summary["generate"], {"batch_size": bs, "compile": True}, expected,
                      gen(bs, True), tolerate=True)


def table(summary: dict[str, Any]) -> str:
    lines = [f"generate: {summary['settings']['arch']} {summary['settings']['size']} px "
             f"{summary['settings']['dtype']}, {summary['settings']['scheduler']} {summary['settings']['steps']} "
             f"steps, guidance {GUIDANCE}, on {summary['device']}",
             f"{'batch':>5} {'compile':>7} {'stage img/s':>11} {'bare img/s':>10} {'stage/bare':>10} "
             f"{'load s':>6} {'warm-up s':>9}"]
    for r in summary["generate"]:
        if "ratio" in r:
            lines.append(f"{r['batch_size']:>5} {str(r['compile']).lower():>7} {r['stage_images_per_s']:>11.2f} "
                         f"{r['bare_images_per_s']:>10.2f} {r['ratio']:>10.3f} {r['load_s']:>6.1f} "
                         f"{r['warmup_s']:>9.1f}")
        else:
            lines.append(f"{r['batch_size']:>5} {str(r['compile']).lower():>7} "
                         f"{r.get('skipped') or r.get('failed')}")
    lines += ["target stage/bare >= 0.95", "",
              f"scoring: open_clip {summary['settings']['clip_arch']} on {summary['device']} "
              f"({summary['settings']['size']} px inputs)",
              f"{'batch':>5} {'factory img/s':>13} {'bare img/s':>10} {'factory/bare':>12} {'preprocess img/s':>16}"]
    for r in summary["scoring"]:
        if "ratio" in r:
            lines.append(f"{r['batch_size']:>5} {r['factory_images_per_s']:>13.1f} {r['bare_images_per_s']:>10.1f} "
                         f"{r['ratio']:>12.3f} {r['preprocess_images_per_s']:>16.1f}")
        else:
            lines.append(f"{r['batch_size']:>5} {r.get('skipped') or r.get('failed')}")
    return "\n".join(lines)


def quiet() -> None:
    """Errors only: no progress bars, no warnings that random weights make meaningless."""
    import logging

    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils

    logging.basicConfig(level=logging.ERROR)
    diffusers_logging.set_verbosity_error()  # e.g. "modules that should be kept in float32: []" on .to(float16)
    diffusers_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()  # save_pretrained's "Writing model shards"
    warnings.filterwarnings("ignore", message="invalid value encountered in cast")  # NaN pixels of random fp16 weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="GPU throughput: generate stage vs bare pipeline, scorer vs bare "
                                             "encode_image (random-weight SD 1.5 and ViT-B-32)")
    ap.add_argument("--smoke", action="store_true", help="the same code paths on the CPU with tiny models")
    ap.add_argument("--out", type=Path, default=None, help="also write a JSON summary here")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,4,8,16)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 20)")
    ap.add_argument("--scheduler", default="dpm", choices=SCHEDULERS, help="default dpm: DPM-Solver++")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile configurations")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no configuration that would end later")
    ap.add_argument("--deadline-s", type=float, default=465.0, help="cut the run short at this many seconds")
    args = ap.parse_args(argv)

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device (torch.cuda.is_available() is False); this benchmark needs a GPU "
              "(python bench/gpu.py --smoke runs its code paths on the CPU)", file=sys.stderr)
        return 2
    s = dict(SETTINGS["smoke" if args.smoke else "gpu"])
    if args.batch_sizes:
        s["batch_sizes"] = tuple(int(b) for b in args.batch_sizes.split(","))
    if args.steps:
        s["steps"] = args.steps
    s["scheduler"] = args.scheduler
    if args.smoke:
        torch.set_num_threads(1)  # tiny models are all overhead; leave the other cores alone
    quiet()
    import diffusers
    import open_clip

    summary: dict[str, Any] = {
        "bench": "bench/gpu.py", "smoke": args.smoke, "random_weights": True,
        "device": torch.cuda.get_device_name(0) if s["device"] == "cuda" else "cpu",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "open_clip": open_clip.__version__},
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()} | {"guidance_scale": GUIDANCE},
        "generate": [], "scoring": [], "notes": [], "complete": True}
    notes = summary["notes"]

    def on_alarm(signum: int, frame: Any) -> None:
        raise Deadline()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(args.deadline_s - elapsed())))
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        try:
            run_all(s, summary, Guard(args.budget_s, notes), Path(tmp), not args.no_compile)
        except Deadline:
            notes.append(f"cut short at the {args.deadline_s:.0f}s deadline; configurations not listed did not run")
            summary["complete"] = False
            print(notes[-1], flush=True)
        finally:
            signal.alarm(0)
    summary["wall_s"] = round(elapsed(), 1)
    print()
    print(table(summary))
    for note in notes:
        print("note:", note)
    print(f"wall {summary['wall_s']}s (random weights: throughput only, never image quality)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
