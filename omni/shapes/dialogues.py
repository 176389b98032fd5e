"""Shapes dialogues: conversations that draw, answer and edit, written as dialogue shards.

    omni shapes dialogues --out data/shapes-chat --train 4000 --val 200 --seed 0

Each sample is a conversation in `omni.data.dialogue`'s layout (LLaVA's JSON, `KEY.0.png`, ...)
of one of two kinds, half each:

* draw: "draw a red circle on the left" -> an image; then (half the time) a question about it ->
  its answer; then "now add a blue square to its right" -> the edited image (the same circle,
  where it was, and the new square in that relation to it); then (half the time) a question about
  the edited scene.
* look: the user shows an image and asks a question -> the answer (text only: the model must
  not draw); a second question; then (half the time) "describe the image" -> its caption.

`KEY.json` also holds `scenes` (the scene of each image, in order), `kind` and `turns` (per
assistant turn: "draw", "edit" or "answer", with what the analyzer needs to score it), which the
benchmark's dialogue metrics use (`omni.shapes.benchmark`). Sample i of a split is a pure
function of (seed, split, i), as in `omni.shapes.render`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
from pathlib import Path

from omni.progress import progress
from omni.shapes.render import SPLITS, render
from omni.shapes.scenes import (
    COLORS,
    MAX_CROSS_RATIO,
    MIN_GAP,
    RELATION_PHRASES,
    RELATIONS,
    SHAPES,
    SIZE_RANGE,
    Scene,
    ShapeObject,
    caption,
    questions,
    sample_scene,
)

DRAW_REQUESTS = ("draw {}", "draw me {}", "show me {}", "make an image of {}", "please draw {}")
EDIT_REQUESTS = ("now add a {obj} {rel} it", "add a {obj} {rel} the {base}", "put a {obj} {rel} it")
DESCRIBE_REQUESTS = ("describe the image", "what is in the picture?", "describe it")


def added_object(base: Scene, rng: random.Random) -> tuple[Scene, str] | None:
    """The one-object `base` with a new object of another kind placed in a random relation to
    it, as a two-object scene (new object first), and that relation; None when no relation fits
    (the base object is where none leaves room)."""
    (a,) = base.objects
    kinds = [(c, s) for c in COLORS for s in SHAPES if (c, s) != (a.color, a.shape)]
    color, shape = rng.choice(kinds)
    size = rng.uniform(*SIZE_RANGE)
    for relation in rng.sample(RELATIONS, len(RELATIONS)):
        for _ in range(200):
            lo, hi = size / 2 + 0.02, 1 - size / 2 - 0.02
            x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
            horizontal = relation in ("left of", "right of")
            along, across = (a.x - x, a.y - y) if horizontal else (a.y - y, a.x - x)
            if relation in ("right of", "below"):
                along = -along
            if along >= (a.size + size) / 2 + MIN_GAP and abs(across) <= MAX_CROSS_RATIO * along:
                new = ShapeObject(color, shape, x=x, y=y, size=size)
                return Scene((new, a), relation=relation), relation
    return None


def _png(scene: Scene, size: int) -> bytes:
    buf = io.BytesIO()
    render(scene, size).save(buf, format="PNG")
    return buf.getvalue()


def _question(scene: Scene, rng: random.Random) -> dict:
    return rng.choice(questions(scene, rng))


def make_dialogue(seed: int, split: str, index: int, size: int = 32) -> tuple[dict, list[bytes]]:
    """Sample `index` of `split`: its KEY.json content and its images (PNG bytes, in order)."""
    rng = random.Random(f"omni-shapes-dialogue/{seed}/{SPLITS[split]}/{index}")
    conversation, scenes, turns = [], [], []

    def say(user: str, assistant: str, turn: dict) -> None:
        conversation.extend([{"from": "human", "value": user}, {"from": "gpt", "value": assistant}])
        turns.append(turn)

    if rng.random() < 0.5:  # draw, then edit
        while True:
            base = sample_scene(rng, two_object_fraction=0.0)
            edit = added_object(base, rng)
            if edit is not None:
                break
        scenes.append(base)
        say(rng.choice(DRAW_REQUESTS).format(base.describe()), "<image>", {"kind": "draw", "image": 0})
        if rng.random() < 0.5:
            qa = _question(base, rng)
            say(qa["question"], qa["answer"], {"kind": "answer", "image": 0, **qa})
        edited, relation = edit
        new, old = edited.objects
        request = rng.choice(EDIT_REQUESTS).format(
            obj=new.name, rel=rng.choice(RELATION_PHRASES[relation]), base=old.shape
        )
        scenes.append(edited)
        say(request, "<image>", {"kind": "edit", "image": 1, "before": 0})
        if rng.random() < 0.5:
            qa = _question(edited, rng)
            say(qa["question"], qa["answer"], {"kind": "answer", "image": 1, **qa})
        kind = "draw"
    else:  # look and answer
        scene = sample_scene(rng)
        scenes.append(scene)
        first, second = rng.sample(questions(scene, rng), 2)
        say("<image>\n" + first["question"], first["answer"], {"kind": "answer", "image": 0, **first})
        say(second["question"], second["answer"], {"kind": "answer", "image": 0, **second})
        if rng.random() < 0.5:
            say(rng.choice(DESCRIBE_REQUESTS), caption(scene, rng), {"kind": "describe", "image": 0})
        kind = "look"
    meta = {
        "conversations": conversation,
        "scenes": [s.to_dict() for s in scenes],
        "kind": kind,
        "turns": turns,
    }
    return meta, [_png(s, size) for s in scenes]


def write_split(out: Path, split: str, count: int, *, seed: int, size: int, per_shard: int) -> list[str]:
    """`count` dialogues as shards `out/{split}-NNNNNN.tar` (byte-identical for a seed)."""
    import webdataset as wds

    names = []
    bar = progress(count, f"dialogues {split}", "dialogue")
    for shard, start in enumerate(range(0, count, per_shard)):
        name = f"{split}-{shard:06d}.tar"
        tmp = out / f".{name}.tmp"
        with wds.TarWriter(str(tmp), mtime=0) as sink:
            for i in range(start, min(start + per_shard, count)):
                meta, images = make_dialogue(seed, split, i, size)
                sample = {"__key__": f"{i:09d}", "json": json.dumps(meta, sort_keys=True).encode()}
                sample.update({f"{n}.png": png for n, png in enumerate(images)})
                sink.write(sample)
                bar.update(1)
        os.replace(tmp, out / name)
        names.append(name)
    bar.close()
    return names


def build(
    out: str | Path, train: int, val: int, size: int = 32, seed: int = 0, per_shard: int = 1000
) -> dict:
    """Write both splits and `info.json`; returns the info dict."""
    if size < 16:
        raise ValueError(f"--size {size} is too small for the shapes to be legible; use 16 or more")
    if train < 0 or val < 0 or per_shard < 1:
        raise ValueError("--train and --val must be >= 0 and --per-shard >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("train-*.tar")) + list(out.glob("val-*.tar")):
        stale.unlink()  # a smaller rebuild must not leave old shards matching the pattern
    shards = {
        s: write_split(out, s, n, seed=seed, size=size, per_shard=per_shard)
        for s, n in (("train", train), ("val", val))
    }
    info = {
        "dataset": "omni-shapes-dialogues",
        "seed": seed,
        "size": size,
        "train": train,
        "val": val,
        "shards": shards,
    }
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omni shapes dialogues", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder for train-*.tar, val-*.tar, info.json")
    parser.add_argument("--train", type=int, default=4000, help="training dialogues (default 4000)")
    parser.add_argument("--val", type=int, default=200, help="validation dialogues (default 200)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--per-shard", type=int, default=1000, help="dialogues per shard (default 1000)")
    args = parser.parse_args(argv)
    info = build(args.out, args.train, args.val, args.size, args.seed, args.per_shard)
    print(f"wrote {info['train']} + {info['val']} dialogues to {args.out}")
    return 0
