"""The embedded shapes dataset: render scenes and write them as webdataset shards.

    omni shapes make --out data/shapes --train 2000 --val 200 --size 32 --seed 0

writes `train-000000.tar, ...` and `val-000000.tar, ...` in the img2dataset layout (each
sample `KEY.png`, `KEY.txt`, `KEY.json`) plus `info.json` describing what was made. Sample i of
a split is a pure function of (seed, split, i), so runs are reproducible and the splits never
share a random stream. Shards are written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from omni.data.objects import scene_objects
from omni.progress import progress as progress_counter
from omni.shapes.scenes import (
    COLORS,
    SHAPES,
    Scene,
    caption,
    is_held_out,
    parse_holdout,
    questions,
    sample_scene,
)

SPLITS = {"train": 1, "val": 2}  # split ids mixed into every sample's seed
SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges like real images


def shape_polygon(shape: str, x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]] | None:
    """Vertices of a square or an upward triangle inside a box; None for a circle."""
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    """Draw one filled shape into `box` (x0, y0, x1, y1) in pixel coordinates."""
    poly = shape_polygon(shape, *box)
    if poly is None:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def objects_json(scene: Scene, size: int) -> list[dict]:
    """The scene's objects as KEY.json's `objects`: name and box (x0, y0, x1, y1) in pixels."""
    return [
        {"name": name, "box": [round(v, 3) for v in box]}
        for name, box in scene_objects(scene.to_dict(), size)
    ]


def render(scene: Scene, size: int) -> Image.Image:
    """Render a scene as an RGB image of `size` x `size` pixels, black background."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        h = o.size / 2
        box = ((o.x - h) * big, (o.y - h) * big, (o.x + h) * big - 1, (o.y + h) * big - 1)
        draw_shape(draw, o.shape, box, COLORS[o.color])
    return img.resize((size, size), Image.BOX)


def render_coverage(
    shape: str, box: tuple[float, float, float, float], width: int, height: int
) -> np.ndarray:
    """Fraction of each pixel of a `height` x `width` grid covered by a shape in `box` (float32)."""
    k = SUPERSAMPLE
    img = Image.new("L", (width * k, height * k))
    x0, y0, x1, y1 = box
    draw_shape(ImageDraw.Draw(img), shape, (x0 * k, y0 * k, x1 * k - 1, y1 * k - 1), 255)
    return np.asarray(img.resize((width, height), Image.BOX), dtype=np.float32) / 255.0


def make_sample(seed: int, split: str, index: int, size: int, holdout=(), two_object_fraction: float = 0.5):
    """Build sample `index` of `split`: (scene, caption, qa pairs, png bytes, held_out flag).

    Training samples never contain a held-out combination (the scene is redrawn from the same
    stream); validation samples may, and are flagged.
    """
    rng = random.Random(f"omni-shapes/{seed}/{SPLITS[split]}/{index}")
    scene = sample_scene(rng, two_object_fraction)
    while split == "train" and is_held_out(scene, holdout):
        scene = sample_scene(rng, two_object_fraction)
    text = caption(scene, rng)
    qa = questions(scene, rng)
    buf = io.BytesIO()
    render(scene, size).save(buf, format="PNG")
    return scene, text, qa, buf.getvalue(), is_held_out(scene, holdout)


def write_split(
    out: Path,
    split: str,
    count: int,
    *,
    seed: int,
    size: int,
    per_shard: int,
    holdout=(),
    two_object_fraction: float = 0.5,
    progress: bool = True,
) -> list[str]:
    """Write `count` samples of one split as shards `out/{split}-NNNNNN.tar`; returns their names."""
    import webdataset as wds

    names = []
    bar = progress_counter(count, f"shapes {split}", "img", enabled=progress)
    for shard, start in enumerate(range(0, count, per_shard)):
        name = f"{split}-{shard:06d}.tar"
        tmp = out / f".{name}.tmp"
        # A fixed mtime makes the same seed give byte-identical shards.
        with wds.TarWriter(str(tmp), mtime=0) as sink:
            for i in range(start, min(start + per_shard, count)):
                scene, text, qa, png, held = make_sample(seed, split, i, size, holdout, two_object_fraction)
                meta = {"scene": scene.to_dict(), "qa": qa, "heldout": held}
                # Every object's box in pixels (omni.data.objects): grounded tasks read them.
                meta |= {"objects": objects_json(scene, size), "image_size": [size, size]}
                sink.write(
                    {
                        "__key__": f"{i:09d}",
                        "png": png,
                        "txt": text.encode(),
                        "json": json.dumps(meta, sort_keys=True).encode(),
                    }
                )
                bar.update(1)
        os.replace(tmp, out / name)
        names.append(name)
    bar.close()
    return names


def build(
    out: str | Path,
    train: int,
    val: int,
    size: int = 32,
    seed: int = 0,
    per_shard: int = 1000,
    holdout: Sequence[str] = (),
    two_object_fraction: float = 0.5,
    progress: bool = True,
) -> dict:
    """Write both splits and `info.json`; returns the info dict."""
    if size < 16:
        raise ValueError(
            f"--size {size} is too small for the shapes to be legible; use 16 or more (32, 64, 256)"
        )
    if train < 0 or val < 0 or per_shard < 1:
        raise ValueError("--train and --val must be >= 0 and --per-shard >= 1")
    if not 0.0 <= two_object_fraction <= 1.0:
        raise ValueError(f"--two-object-fraction must be in [0, 1], got {two_object_fraction}")
    combos = parse_holdout(holdout)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("train-*.tar")) + list(out.glob("val-*.tar")):
        stale.unlink()  # a smaller rebuild must not leave old shards matching the pattern
    kw = dict(
        seed=seed, size=size, per_shard=per_shard, holdout=combos, two_object_fraction=two_object_fraction
    )
    shards = {
        "train": write_split(out, "train", train, progress=progress, **kw),
        "val": write_split(out, "val", val, progress=progress, **kw),
    }
    info = {
        "dataset": "omni-shapes",
        "seed": seed,
        "size": size,
        "counts": {"train": train, "val": val},
        "per_shard": per_shard,
        "two_object_fraction": two_object_fraction,
        "holdout": list(holdout),
        "shards": shards,
        "train_pattern": str(out / "train-*.tar"),
        "val_pattern": str(out / "val-*.tar"),
    }
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omni shapes make",
        description="Write the procedurally generated shapes dataset as webdataset shards "
        "(KEY.png / KEY.txt / KEY.json per sample).",
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--train", type=int, default=2000, help="number of training samples")
    parser.add_argument("--val", type=int, default=200, help="number of validation samples")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (32, 64, 256, ...)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; splits use disjoint streams")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per tar shard")
    parser.add_argument(
        "--two-object-fraction", type=float, default=0.5, help="fraction of scenes with two objects"
    )
    parser.add_argument(
        "--holdout",
        action="append",
        default=[],
        metavar="WORDS",
        help="attribute combination kept out of training, e.g. 'red circle' or 'blue left'; "
        "repeat or comma-separate for several. Validation samples that contain one are flagged "
        '"heldout": true in KEY.json.',
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    holdout = [h.strip() for entry in args.holdout for h in entry.split(",") if h.strip()]
    try:
        info = build(
            args.out,
            args.train,
            args.val,
            size=args.size,
            seed=args.seed,
            per_shard=args.per_shard,
            holdout=holdout,
            two_object_fraction=args.two_object_fraction,
            progress=not args.quiet,
        )
    except ValueError as e:
        parser.error(str(e))
    n_shards = sum(len(v) for v in info["shards"].values())
    print(
        f"wrote {info['counts']['train']} train + {info['counts']['val']} val samples at {args.size}px "
        f"in {n_shards} shards to {args.out}/ (train: {info['train_pattern']}, val: {info['val_pattern']})"
    )
    return 0
