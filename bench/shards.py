"""Memory does not grow with dataset size: write and read back N images, report peak RSS.

Each measurement runs in a fresh subprocess (peak RSS is per process). Prints, side by side,
the streaming writer/reader at 2,000 and 20,000 images and a naive baseline that materialises
the samples in a list first. Usage: python bench/shards.py [--sizes 2000 20000] [--image-size 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_samples(n: int, size: int):
    import io

    import numpy as np
    from PIL import Image

    from factory.core.sample import real_sample

    rng = np.random.default_rng(0)
    for i in range(n):
        px = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG", compress_level=1)
        yield real_sample(f"b-{i:07d}", buf.getvalue(), i % 10, str(i % 10), {"dataset": "bench", "index": i})


def child(n: int, size: int, mode: str) -> dict:
    from factory.core.shards import Dataset, DatasetWriter

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ds"
        t0 = time.perf_counter()
        samples = make_samples(n, size)
        if mode == "naive":
            samples = list(samples)  # what a quick script does: hold everything, then write
        with DatasetWriter(out, "bench", [str(i) for i in range(10)], shard_size=1000) as w:
            w.write_all(samples)
        del samples
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        read = 0
        for s in Dataset(out):
            s.pil()  # full decode
            read += 1
        t_read = time.perf_counter() - t0
        bytes_on_disk = sum(p.stat().st_size for p in out.glob("*.tar"))
    assert read == n
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "mode": mode, "peak_rss_mib": round(peak_mib, 1), "write_s": round(t_write, 2),
            "read_s": round(t_read, 2), "disk_mib": round(bytes_on_disk / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--child", nargs=2, metavar=("N", "MODE"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.image_size, args.child[1])))
        return
    rows = []
    for mode in ("stream", "naive"):
        for n in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--child", str(n), mode, "--image-size",
                                  str(args.image_size)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['mode']:>7} n={r['n']:>7,}  peak RSS {r['peak_rss_mib']:>8.1f} MiB  "
                  f"write {r['write_s']:>6.1f}s  read+decode {r['read_s']:>6.1f}s  on disk {r['disk_mib']} MiB",
                  flush=True)
    small, big = min(args.sizes), max(args.sizes)
    peak = {(r["mode"], r["n"]): r["peak_rss_mib"] for r in rows}
    for mode in ("stream", "naive"):
        print(f"{mode}: peak RSS at {big:,} / at {small:,} images = {peak[(mode, big)] / peak[(mode, small)]:.2f}x "
              f"(data grew {big / small:.0f}x)")


if __name__ == "__main__":
    main()
