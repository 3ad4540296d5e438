"""Generation speed: the ``generate`` stage's images/s next to a bare sampling loop.

The bare loop calls the same UNet and scheduler directly, with the same batch size, steps and
classifier-free guidance (one batched forward over [null; cond]), and keeps the images as a uint8
tensor: no PNG encoding, no provenance, no hashing, no tar writing. The stage does all of that and
writes a real dataset. Runs alternate (stage, bare, stage, bare, ...) and the best of each is kept.

Usage: python bench/generate.py [--model models/generator] [--images 1280] [--batch-size 64]
If the model folder does not exist, a model of the default architecture is trained for a few steps
(speed does not depend on how well it is trained).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from factory.data.ingest import ingest
from factory.generate.backends.base import SamplerConfig
from factory.generate.backends.embedded import EmbeddedGenerator
from factory.generate.plans import PlanConfig, build_plan, write_plan
from factory.generate.tasks import GenerateConfig, generate
from factory.train.generator import EmbeddedTrainConfig, train_generator


def bare_loop(gen: EmbeddedGenerator, n: int, batch: int, steps: int, w: float) -> float:
    """Images/s of the model and scheduler called directly."""
    model, unet, sched = gen.model, gen.model.unet, gen.scheduler
    n_axes = len(gen.attributes)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, n, batch):
            labels = torch.arange(start, start + batch) % len(gen.classes)
            attrs = torch.tensor([[len(v) for v in gen.attributes.values()]] * batch).reshape(batch, n_axes)
            cond = model.embed(labels, attrs)
            emb = torch.cat([model.null_embedding().expand(batch, -1), cond])
            x = torch.randn(batch, gen.channels, gen.image_size, gen.image_size)
            sched.set_timesteps(steps)
            x = x * sched.init_noise_sigma
            for t in sched.timesteps:
                eps = unet(torch.cat([x, x]), t, class_labels=emb, return_dict=False)[0]
                eps_u, eps_c = eps.chunk(2)
                x = sched.step(eps_u + w * (eps_c - eps_u), t, x, return_dict=False)[0]
            ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description="generate stage vs bare loop, images/s")
    ap.add_argument("--model", default="models/generator")
    ap.add_argument("--images", type=int, default=1280)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model)
        if not (model / "model.safetensors").is_file():
            print(f"{model} not found: training a default-architecture model for 20 steps (speed only)")
            ingest("sklearn:digits", tmp / "digits")
            model = tmp / "generator"
            train_generator(tmp / "digits", EmbeddedTrainConfig(steps=20), model)
        sampler = SamplerConfig(guidance_scale=args.guidance, steps=args.steps, batch_size=args.batch_size)
        gen = EmbeddedGenerator.load(model, sampler)
        per_class = args.images // len(gen.classes)
        plan = build_plan(PlanConfig(images_per_class=per_class, images_per_prompt=4), gen.classes)
        write_plan(plan, tmp / "plan.jsonl")
        n = len(plan.rows)
        cfg = GenerateConfig(backend="embedded", model=str(model), **sampler.model_dump())
        stage, bare = [], []
        for r in range(args.repeats):
            out = tmp / f"raw{r}"
            t0 = time.perf_counter()
            generate(tmp / "plan.jsonl", out, cfg)
            stage.append(n / (time.perf_counter() - t0))
            bare.append(bare_loop(gen, n, args.batch_size, args.steps, args.guidance))
            print(f"run {r + 1}: stage {stage[-1]:6.1f} images/s   bare loop {bare[-1]:6.1f} images/s")
        print(f"images {n}, batch {args.batch_size}, steps {args.steps}, guidance {args.guidance}, "
              f"torch threads {torch.get_num_threads()}")
        print(f"best: stage {max(stage):.1f} images/s, bare loop {max(bare):.1f} images/s, "
              f"ratio stage/bare = {max(stage) / max(bare):.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
