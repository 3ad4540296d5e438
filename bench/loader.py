"""The pool loader against decoding the same images directly in a loop (target: ratio >= 0.8).

Builds a dataset of N images (digits, or random RGB images with --image-size), a pool that draws a
share of it by reference (so the loader must skip samples it does not want, as it does in real pools),
then measures, alternating the two several times and keeping each one's best run:

- direct: read each shard with Python's ``tarfile``, decode every image of the pool with PIL and turn
  it into the same ``(C, H, W)`` float tensor, in a plain loop;
- loader: ``PoolStream`` through a ``DataLoader`` with batches of 64, with 0 and with 2 workers. The pool
  fits its memory limit, so the loader reads the drawn samples once through the checked tar reader, then
  decodes them in a seeded permutation (every batch mixed); ``--streamed`` forces the streamed path (shuffled
  shards read several at once, components interleaved, shuffle buffer of 1,000).

Usage: python bench/loader.py [--images 20000] [--fraction 0.8] [--image-size 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_dataset(out: Path, n: int, size: int) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from factory.core.sample import real_sample
    from factory.core.shards import DatasetWriter

    digits = load_digits()
    rng = np.random.default_rng(0)
    with DatasetWriter(out, "bench-loader", [str(i) for i in range(10)], shard_size=1000) as w:
        for i in range(n):
            j = i % len(digits.images)
            if size == 8:
                px = (digits.images[j] * (255 / 16)).astype(np.uint8)
                im = Image.fromarray(px, mode="L")
            else:
                im = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            label = int(digits.target[j])
            w.write(real_sample(f"img-{i:07d}", buf.getvalue(), label, str(label), {"dataset": "bench", "index": i}))
        w.close()


def direct(pool: dict, mode: str, size: int) -> int:
    """The baseline: tarfile + PIL + image_to_tensor over the pool's keys, no pipeline."""
    from PIL import Image

    from factory.core.images import image_to_tensor

    n = 0
    for comp in pool["components"]:
        root = Path(comp["dataset"]["path"])
        wanted = set(comp["keys"])
        for shard in sorted(root.glob("shard-*.tar")):
            with tarfile.open(shard) as tf:
                for m in tf:
                    key, _, ext = m.name.partition(".")
                    if ext == "png" and key in wanted:
                        with Image.open(io.BytesIO(tf.extractfile(m).read())) as im:
                            image_to_tensor(im, mode, size)
                        n += 1
    return n


def loader(pool: dict, mode: str, size: int, workers: int, streamed: bool = False) -> int:
    from factory.data.loader import MEMORY_BYTES, PoolStream, make_loader

    stream = PoolStream(pool, image_size=size, mode=mode, shuffle_buffer=1000,
                        memory_bytes=0 if streamed else MEMORY_BYTES)
    n = 0
    for x, _ in make_loader(stream, 64, workers):
        n += len(x)
    return n


def best_rate(fn, *args, repeats: int) -> tuple[float, int]:
    best, count = 0.0, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        count = fn(*args)
        best = max(best, count / (time.perf_counter() - t0))
    return best, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--fraction", type=float, default=0.8, help="share of the dataset the pool draws")
    ap.add_argument("--image-size", type=int, default=8, help="8: the digits (grayscale); else random RGB")
    ap.add_argument("--model-size", type=int, default=16, help="tensor size the images are resized to")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--streamed", action="store_true", help="the loader's streamed path (pools over its memory limit)")
    args = ap.parse_args()

    import torch

    from factory.data.pools import Component, PoolSpec, build_pool

    torch.set_num_threads(1)
    mode = "L" if args.image_size == 8 else "RGB"
    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "ds"
        make_dataset(ds, args.images, args.image_size)
        pool = build_pool(PoolSpec("bench", (Component(str(ds), fraction=args.fraction),), 0))
        rows = []
        d_rate, d_n = best_rate(direct, pool, mode, args.model_size, repeats=args.repeats)
        rows.append({"reader": "direct loop (tarfile + PIL)", "images": d_n, "images_per_s": round(d_rate)})
        for workers in (0, 2):
            rate, n = best_rate(loader, pool, mode, args.model_size, workers, args.streamed, repeats=args.repeats)
            assert n == d_n, f"loader gave {n} images, direct {d_n}"
            rows.append({"reader": f"PoolStream{' streamed' if args.streamed else ''} + DataLoader, {workers} workers",
                         "images": n,
                         "images_per_s": round(rate), "ratio": round(rate / d_rate, 3)})
    print(f"pool of {d_n} images drawn from {args.images} ({args.image_size}x{args.image_size} {mode}, "
          f"tensors {args.model_size}x{args.model_size}), best of {args.repeats}:")
    for r in rows:
        print(f"  {r['reader']:<40} {r['images_per_s']:>8} images/s" +
              (f"   ratio {r['ratio']:.3f}" if "ratio" in r else ""))
    ok = rows[1]["ratio"] >= 0.8
    print(f"target ratio >= 0.8 (0 workers, like for like): {'met' if ok else 'NOT met'}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
