"""Samples/s of the image-text loader on shapes shards at 32 px and 256 px.

    python bench/data_throughput.py [--workers 2] [--batches 40]

Builds shapes shards in a temporary folder (or uses --data DIR/{32,256}/ if given), reads
them with `omni.data.loader.image_text_loader`, and prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from omni.data.loader import image_text_loader
from omni.shapes.render import build


def measure(pattern: str, resolution: int, batch_size: int, workers: int, batches: int, warmup: int) -> float:
    loader = image_text_loader(
        pattern,
        resolution=resolution,
        batch_size=batch_size,
        num_workers=workers,
        batches_per_epoch=warmup + batches,
    )
    it = iter(loader)
    for _ in range(warmup):  # worker start-up and shuffle-buffer fill are not throughput
        next(it)
    start = time.perf_counter()
    n = 0
    for batch in it:
        n += batch["image"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", default=None, help="reuse shards under DATA/32 and DATA/256")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the workers do the decoding; keep the main process from competing
    root = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="omni-bench-"))
    results = {"workers": args.workers, "batch_size": args.batch_size, "cpu_count": os.cpu_count()}
    for size, count in ((32, 4000), (256, 1500)):
        folder = root / str(size)
        if not (folder / "info.json").exists():
            t = time.perf_counter()
            build(folder, train=count, val=0, size=size, per_shard=250, progress=False)
            results[f"generate_{size}px_images_per_s"] = round(count / (time.perf_counter() - t), 1)
        rate = measure(
            str(folder / "train-*.tar"), size, args.batch_size, args.workers, args.batches, warmup=3
        )
        results[f"samples_per_s_{size}px"] = round(rate, 1)
        print(f"{size}px: {rate:.0f} samples/s with {args.workers} workers", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
