"""Recognition rate of the embedded generator's images, per guidance scale and per class.

A reference CNN trained on the REAL train split (factory.measure.recognition) classifies images generated
for each class; the share it assigns to the intended class is the recognition rate. Also reports
images/s of ``EmbeddedGenerator.generate`` and, with ``--bare-loop``, the same denoising loop written
directly against the UNet and scheduler (no request handling, no per-image seeding, no PNG), so the
overhead of ``generate`` can be read off.

Example (the real split made by ``factory.data.ingest.split``)::

    python bench/recognition.py --train /tmp/emb/train --test /tmp/emb/test \\
        --generator /tmp/emb/generator --classifier /tmp/emb/refclf --per-class 100 --scales 1 2 4
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from factory.generate.backends.base import GenRequest, SamplerConfig
from factory.generate.backends.embedded import EmbeddedGenerator
from factory.measure.recognition import (
    accuracy,
    load_reference_classifier,
    recognition,
    save_reference_classifier,
    train_reference_classifier,
)
from factory.train.generator import EmbeddedTrainConfig, train_generator


def get_classifier(args: argparse.Namespace):
    d = Path(args.classifier) if args.classifier else None
    if d is not None and (d / "classifier.json").is_file():
        model, info = load_reference_classifier(d)
        info = {**info, "loaded_from": str(d)}
    else:
        model, info = train_reference_classifier(args.train, image_size=args.image_size, epochs=args.clf_epochs,
                                                 seed=args.seed)
        if d is not None:
            save_reference_classifier(model, info, d)
    info["test_accuracy"] = round(accuracy(model, args.test), 5)
    return model, info


def make_requests(classes: list[str], per_class: int, seed: int) -> list[GenRequest]:
    """Classes interleaved (0, 1, ..., 9, 0, 1, ...) so every batch mixes labels."""
    return [GenRequest(key=f"c{c}-{i:05d}", label=c, class_name=classes[c], text=classes[c],
                       seed=seed * 1_000_003 + i * len(classes) + c)
            for i in range(per_class) for c in range(len(classes))]


@torch.inference_mode()
def bare_loop(gen: EmbeddedGenerator, n_images: int) -> float:
    """Seconds for the same batches and steps as generate(), straight on the UNet and scheduler."""
    s = gen.sampler
    unet, sched, w, b = gen.unet, gen.scheduler, float(s.guidance_scale), s.batch_size
    labels = torch.arange(b) % len(gen.classes)
    attrs = torch.tensor([len(v) for v in gen.attributes.values()], dtype=torch.long).expand(b, -1)
    cond = gen.model.embed(labels, attrs)
    null = gen.model.null_embedding().expand(b, -1)
    guided = w not in (0.0, 1.0)
    emb = null if w == 0 else (torch.cat([null, cond]) if guided else cond)
    start = time.perf_counter()
    for _ in range(-(-n_images // b)):
        x = torch.randn(b, gen.channels, gen.image_size, gen.image_size)
        sched.set_timesteps(s.steps)
        for t in sched.timesteps:
            eps = unet(torch.cat([x, x]) if guided else x, t, class_labels=emb).sample
            if guided:
                eu, ec = eps.chunk(2)
                eps = eu + w * (ec - eu)
            x = sched.step(eps, t, x).prev_sample
        (x.clamp(-1, 1) + 1).mul(127.5).round().to(torch.uint8)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="real train split (dataset folder)")
    p.add_argument("--test", required=True, help="real test split (dataset folder)")
    p.add_argument("--generator", required=True, help="embedded generator folder")
    p.add_argument("--train-generator", action="store_true",
                   help="train the generator with the default config first (replaces --generator)")
    p.add_argument("--classifier", help="reference classifier folder: loaded if present, else trained and saved")
    p.add_argument("--clf-epochs", type=int, default=20)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--scheduler", default="ddim")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bare-loop", action="store_true", help="also time a bare UNet+scheduler loop")
    p.add_argument("--overhead-batches", type=int, default=4, help="full batches per overhead round")
    p.add_argument("--repeats", type=int, default=3, help="alternating overhead rounds")
    p.add_argument("--save-grid", help="write a PNG grid of the first images per scale to this folder")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    result: dict = {"torch_threads": torch.get_num_threads()}
    if args.train_generator:
        result["train_generator"] = train_generator(args.train, EmbeddedTrainConfig(seed=args.seed), args.generator)
        print("generator:", json.dumps(result["train_generator"]), flush=True)
    t = time.perf_counter()
    clf, info = get_classifier(args)
    result["classifier"] = {**info, "wall_seconds": round(time.perf_counter() - t, 2)}
    print(f"reference classifier: real test accuracy {info['test_accuracy']:.4f} "
          f"(train {info.get('seconds', '?')} s)", flush=True)

    result["scales"] = {}
    for w in args.scales:
        gen = EmbeddedGenerator.load(args.generator, SamplerConfig(guidance_scale=w, steps=args.steps,
                                                                   scheduler=args.scheduler,
                                                                   batch_size=args.batch_size))
        requests = make_requests(gen.classes, args.per_class, args.seed)
        t = time.perf_counter()
        pngs = gen.generate(requests)
        secs = time.perf_counter() - t
        images = [Image.open(io.BytesIO(b)) for b in pngs]
        r = recognition(clf, images, [q.label for q in requests], gen.classes)
        r["images_per_s"] = round(len(pngs) / secs, 2)
        r["seconds"] = round(secs, 2)
        line = f"w={w:g}: recognition {r['overall']:.4f}  {r['images_per_s']:.1f} images/s"
        if args.bare_loop:
            # Alternate generate() and the bare loop on the same number of full batches and keep the
            # fastest of each: on a shared machine one long run of each says more about the load.
            n = args.batch_size * args.overhead_batches
            # CPU time (all threads) is also compared: it is much less sensitive to other processes.
            t_gen, t_bare, c_gen, c_bare = [], [], [], []
            for _ in range(args.repeats):
                t, c = time.perf_counter(), time.process_time()
                gen.generate(requests[:n])
                t_gen.append(time.perf_counter() - t)
                c_gen.append(time.process_time() - c)
                c = time.process_time()
                t_bare.append(bare_loop(gen, n))
                c_bare.append(time.process_time() - c)
            r["bare_images_per_s"] = round(n / min(t_bare), 2)
            r["generate_images_per_s_best"] = round(n / min(t_gen), 2)
            r["overhead"] = round(min(t_gen) / min(t_bare) - 1.0, 4)
            r["overhead_cpu"] = round(min(c_gen) / min(c_bare) - 1.0, 4)
            r["overhead_rounds"] = [round(a / b - 1.0, 4) for a, b in zip(t_gen, t_bare)]
            line += (f"  (best of {args.repeats} x {n} images: generate {r['generate_images_per_s_best']:.1f}, "
                     f"bare loop {r['bare_images_per_s']:.1f} images/s, overhead {100 * r['overhead']:+.1f}% "
                     f"wall, {100 * r['overhead_cpu']:+.1f}% cpu)")
        print(line, flush=True)
        print("   per class: " + "  ".join(f"{k}:{v:.3f}" for k, v in r["per_class"].items()), flush=True)
        result["scales"][f"{w:g}"] = r
        if args.save_grid:
            out = Path(args.save_grid)
            out.mkdir(parents=True, exist_ok=True)
            n = len(gen.classes)
            rows = min(args.per_class, 10)
            grid = Image.new(images[0].mode, (16 * n, 16 * rows))
            for k, im in enumerate(images[: n * rows]):
                grid.paste(im, ((k % n) * 16, (k // n) * 16))
            grid.resize((grid.width * 4, grid.height * 4), Image.Resampling.NEAREST).save(out / f"grid-w{w:g}.png")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
