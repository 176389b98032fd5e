"""The shapes analyzer: parse images and captions back into scenes and score them exactly.

It is the ground truth of every shapes quality figure, so it is deliberately simple and
strict:

* image -> objects: each pixel is classified by hue sector (the six colours sit 60 degrees
  apart) when it is colourful enough; connected components per colour are objects; an
  object's shape is the rendered template (circle / square / triangle) that best matches its
  coverage, each template placed by the object's mass and centroid (which blur does not move)
  and tried sharp and blurred, so the soft edges of a VQ decoder's output do not matter. A
  blob that matches no template well is an "unknown" shape and never scores.
* caption -> scene: a lenient regular grammar over the dataset's phrasings.
* scoring: a prompt (or scene) and an image match when they have the same objects, the same
  position word (one object) and the same relation (two objects).

    omni shapes benchmark --shards 'data/shapes/val-*.tar'

scores the ground-truth images and captions of shards (a self-check; it should print 1.0).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from omni.shapes.render import render_coverage
from omni.shapes.scenes import (
    COLORS,
    NUMBER_WORDS,
    SHAPES,
    Scene,
    ShapeObject,
    position_of,
    relation_between,
)

COLOR_BY_SECTOR = {
    round(_hue / 60) % 6: name
    for name, _hue in (
        ("red", 0),
        ("yellow", 60),
        ("green", 120),
        ("cyan", 180),
        ("blue", 240),
        ("magenta", 300),
    )
}
assert set(COLOR_BY_SECTOR.values()) == set(COLORS)

MIN_CHROMA = 0.2  # a pixel is part of an object when max-min of its RGB (0..1) is at least this
MIN_SATURATION = 0.5  # ... and chroma / value is at least this (greys and dim noise are background)
MIN_OBJECT_AREA = 0.008  # components with less coverage than this fraction of the image are specks
# Below this soft IoU with its best template a blob is no shape at all ("unknown"). Ground-truth
# objects score >= 0.80 even when blurred; elongated ellipses score around 0.7 and less.
MIN_SHAPE_SCORE = 0.65
UNKNOWN_SHAPE = "unknown"


@dataclass(frozen=True)
class Match:
    """Outcome of a comparison; truthy when it matched, `reason` says why not."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


# ----------------------------------------------------------------------------------------------
# Images


def to_rgb_array(image) -> np.ndarray:
    """A PIL image, or an HxWx3 uint8 / float (0..1) array, as float32 HxWx3 in 0..1."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got an array of shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def color_sectors(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: hue sector 0..5 (-1 for background) and chroma (max - min of RGB)."""
    v = rgb.max(-1)
    c = v - rgb.min(-1)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(c > 0, c, 1.0)
    hue = np.select(  # standard HSV hue in units of 60 degrees
        [v == r, v == g],
        [((g - b) / safe) % 6, (b - r) / safe + 2],
        (r - g) / safe + 4,
    )
    sector = np.rint(hue).astype(np.int64) % 6
    fg = (c >= MIN_CHROMA) & (c >= MIN_SATURATION * np.maximum(v, 1e-6))
    return np.where(fg, sector, -1), c


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean mask (0 = background).

    Min-label propagation with pointer jumping: every pixel points at the smallest pixel index
    it is known to share a component with, so a component converges in a few dozen passes.
    """
    h, w = mask.shape
    idx = np.arange(h * w).reshape(h, w)
    big = h * w
    ptr = np.where(mask, idx, big)
    while True:
        p = np.pad(ptr, 1, constant_values=big)
        nb = np.minimum.reduce([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
        new = np.where(mask, nb, big)
        flat = np.append(new.ravel(), big)
        for _ in range(4):  # jump: adopt the pointer of the pixel pointed at
            new = np.where(mask, flat[new], big)
            flat = np.append(new.ravel(), big)
        if np.array_equal(new, ptr):
            break
        ptr = new
    # Renumber 1..n; the appended -1 makes background 0 even when the mask is full.
    _, labels = np.unique(np.append(np.where(mask, ptr, -1).ravel(), -1), return_inverse=True)
    return labels[:-1].reshape(h, w)


def _blur3(a: np.ndarray) -> np.ndarray:
    p = np.pad(a, 1)
    h, w = a.shape
    return sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0


# Side of the box of each shape whose filled area is 1, and where its centroid sits below the
# box centre (as a fraction of the side): mass and centroid are unchanged by blur, so the box
# fitted from them is too.
_UNIT_SIDE = {"square": 1.0, "circle": (4 / np.pi) ** 0.5, "triangle": 2**0.5}
_CENTROID_DROP = {"square": 0.0, "circle": 0.0, "triangle": 1 / 6}


def classify_shape(coverage: np.ndarray) -> tuple[str, tuple[float, float, float], dict[str, float]]:
    """Best template for a coverage patch: (shape, (box centre x, centre y, side) in patch pixels, scores).

    For each shape the box is fitted from the patch's mass and centroid, the template is
    rendered there, sharp and blurred, and compared by soft IoU.
    """
    h, w = coverage.shape
    mass = float(coverage.sum())
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    cx, cy = float((coverage * xs).sum() / mass), float((coverage * ys).sum() / mass)
    scores, boxes = {}, {}
    for shape in SHAPES:
        side = _UNIT_SIDE[shape] * mass**0.5
        bx, by = cx, cy - _CENTROID_DROP[shape] * side
        template = render_coverage(shape, (bx - side / 2, by - side / 2, bx + side / 2, by + side / 2), w, h)
        scores[shape] = max(_soft_iou(coverage, template), _soft_iou(coverage, _blur3(template)))
        boxes[shape] = (bx, by, side)
    best = max(scores, key=scores.get)
    return (best if scores[best] >= MIN_SHAPE_SCORE else UNKNOWN_SHAPE), boxes[best], scores


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))


def find_objects(image) -> list[ShapeObject]:
    """Every coloured object in the image, left to right, with its box in image fractions."""
    rgb = to_rgb_array(image)
    height, width = rgb.shape[:2]
    sectors, chroma = color_sectors(rgb)
    min_mass = MIN_OBJECT_AREA * height * width
    found = []
    for sector in np.unique(sectors):
        if sector < 0 or (sectors == sector).sum() < min_mass:
            continue
        mask = sectors == sector
        ys, xs = np.nonzero(mask)
        oy, ox = ys.min(), xs.min()  # label only the region that holds this colour
        labels = label_components(mask[oy : ys.max() + 1, ox : xs.max() + 1])
        for lab in range(1, labels.max() + 1):
            comp = np.zeros_like(mask)
            comp[oy : oy + labels.shape[0], ox : ox + labels.shape[1]] = labels == lab
            cy_, cx_ = np.nonzero(comp)
            # Coverage relative to the object's brightest pixel: the palette is fully saturated,
            # so a pixel at the object's full chroma is fully inside it.
            ref = float(chroma[comp].max())
            coverage = np.where(comp, np.clip(chroma / max(ref, 1e-6), 0.0, 1.0), 0.0)
            if coverage.sum() < min_mass:
                continue
            pad = 3
            y0, y1 = max(cy_.min() - pad, 0), min(cy_.max() + pad + 1, height)
            x0, x1 = max(cx_.min() - pad, 0), min(cx_.max() + pad + 1, width)
            shape, (bx, by, side), _ = classify_shape(coverage[y0:y1, x0:x1].astype(np.float32))
            found.append(
                ShapeObject(
                    COLOR_BY_SECTOR[int(sector)],
                    shape,
                    x=(x0 + bx) / width,
                    y=(y0 + by) / height,
                    size=side / width,
                )
            )
    return sorted(found, key=lambda o: (o.x, o.y))


def parse_image(image) -> Scene | None:
    """The image's scene, or None when it is not a valid scene (object count, corner position)."""
    objs = find_objects(image)
    if any(o.shape == UNKNOWN_SHAPE for o in objs):
        return None
    if len(objs) == 1:
        pos = position_of(objs[0])
        return Scene(tuple(objs), position=pos) if pos else None
    if len(objs) == 2:
        return Scene(tuple(objs), relation=relation_between(*objs))
    return None


# ----------------------------------------------------------------------------------------------
# Captions and answers

_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_ART = r"(?:a|an|one|the)"
_POS = r"(?:on|at|in) the (?P<pos>left|right|top|bottom|center|centre|middle)"
_REL = r"(?P<rel>(?:to the )?left of|(?:to the )?right of|above|below|under|beneath)"
_OBJ1 = rf"{_ART} (?P<c1>{_COLOR}) (?P<s1>{_SHAPE})"
_OBJ2 = rf"{_ART} (?P<c2>{_COLOR}) (?P<s2>{_SHAPE})"
_CAPTION_PATTERNS = [
    re.compile(rf"^(?:there is )?{_OBJ1} (?:is )?{_POS}$"),
    re.compile(rf"^{_POS} there is {_OBJ1}$"),
    re.compile(rf"^(?:there is )?{_OBJ1} (?:is )?{_REL} {_OBJ2}$"),
]
_CANONICAL = {
    "centre": "center",
    "middle": "center",
    "to the left of": "left of",
    "to the right of": "right of",
    "under": "below",
    "beneath": "below",
}


def normalize_text(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def parse_caption(text: str) -> Scene | None:
    """The scene a caption describes, or None when it is outside the grammar."""
    t = normalize_text(text)
    for pattern in _CAPTION_PATTERNS:
        m = pattern.match(t)
        if not m:
            continue
        g = m.groupdict()
        a = ShapeObject(g["c1"], g["s1"])
        if g.get("pos"):
            return Scene((a,), position=_CANONICAL.get(g["pos"], g["pos"]))
        b = ShapeObject(g["c2"], g["s2"])
        return Scene((a, b), relation=_CANONICAL.get(g["rel"], g["rel"]))
    return None


def normalize_answer(text: str) -> str:
    """Canonical one-word answer: 'The Left.' -> 'left', '2' -> 'two', 'under' -> 'below'."""
    t = normalize_text(text)
    t = re.sub(r"^(?:to |on |at |in )?(?:the |a |an )?", "", t)
    t = t.removesuffix(" of")
    if t.isdigit() and int(t) < len(NUMBER_WORDS):
        t = NUMBER_WORDS[int(t)]
    return _CANONICAL.get(t, t)


def check_answer(predicted: str, expected: str) -> bool:
    """Whether a predicted answer equals the expected one after normalisation."""
    return normalize_answer(predicted) == normalize_answer(expected)


# ----------------------------------------------------------------------------------------------
# Scoring


def match_scene(expected: Scene, found: Sequence[ShapeObject]) -> Match:
    """Whether objects found in an image realise the expected scene exactly."""
    names = sorted(o.name for o in expected.objects)
    got = sorted(o.name for o in found)
    if names != got:
        return Match(False, f"objects: expected {names}, found {got}")
    if len(found) == 1:
        pos = position_of(found[0])
        if pos != expected.position:
            return Match(False, f"position: expected {expected.position}, found {pos}")
        return Match(True)
    want_a, want_b = (o.name for o in expected.objects)
    for a, b in (found, found[::-1]):  # both assignments, in case the two names are equal
        if a.name == want_a and b.name == want_b and relation_between(a, b) == expected.relation:
            return Match(True)
    a = next(o for o in found if o.name == want_a)
    b = next(o for o in found if o is not a)
    return Match(False, f"relation: expected {expected.relation}, found {relation_between(a, b)}")


def score_image(prompt: str | Scene, image) -> Match:
    """Whether an image shows exactly what a prompt (caption text or Scene) asks for."""
    scene = parse_caption(prompt) if isinstance(prompt, str) else prompt
    if scene is None:
        return Match(False, f"prompt outside the shapes grammar: {prompt!r}")
    return match_scene(scene, find_objects(image))


def score_edit(before: Scene, after: Scene, image) -> Match:
    """Whether an edited image shows the `after` scene exactly and keeps the one object of
    `before` where it was (same position word): the old scene plus the requested change."""
    found = find_objects(image)
    result = match_scene(after, found)
    if not result:
        return result
    (old,) = before.objects
    kept = next(o for o in found if o.name == old.name)
    if position_of(kept) != before.position:
        return Match(False, f"moved: the {old.name} was {before.position}, is {position_of(kept)}")
    return Match(True)


def score_caption(scene: Scene, text: str) -> Match:
    """Whether a caption describes the scene exactly (same objects, position or relation)."""
    parsed = parse_caption(text)
    if parsed is None:
        return Match(False, f"caption outside the shapes grammar: {text!r}")
    if len(parsed.objects) != len(scene.objects):
        return Match(False, f"caption names {len(parsed.objects)} objects, scene has {len(scene.objects)}")
    return match_scene(parsed, scene.objects)


# ----------------------------------------------------------------------------------------------
# Command line: self-check on ground-truth shards


def evaluate_shards(pattern: str, limit: int | None = None, blur_radius: int = 0) -> dict:
    """Score the ground-truth images and captions of shards; returns accuracies by object count.

    `blur_radius` > 0 first blurs each image with a (2r+1) x (2r+1) box filter, to check the
    analyzer's robustness to soft edges.
    """
    import io

    from PIL import ImageFilter

    from omni.data.shards import iterate_samples

    totals: dict[str, list[int]] = {}
    failures = []
    for n, sample in enumerate(iterate_samples(pattern)):
        if limit is not None and n >= limit:
            break
        meta = json.loads(sample["json"])
        scene = Scene.from_dict(meta["scene"])
        image = Image.open(io.BytesIO(sample["png"])).convert("RGB")
        if blur_radius:
            image = image.filter(ImageFilter.BoxBlur(blur_radius))
        k = "one" if len(scene.objects) == 1 else "two"
        for name, result in (
            ("image", match_scene(scene, find_objects(image))),
            ("caption", score_caption(scene, sample["txt"].decode())),
        ):
            totals.setdefault(f"{name}_{k}", [0, 0])
            totals[f"{name}_{k}"][0] += bool(result)
            totals[f"{name}_{k}"][1] += 1
            if not result and len(failures) < 10:
                failures.append({"key": sample["__key__"], "check": name, "reason": result.reason})
    report: dict = {"n": sum(t[1] for k, t in totals.items() if k.startswith("image"))}
    for name in ("image", "caption"):
        parts = [totals.get(f"{name}_{k}", [0, 0]) for k in ("one", "two")]
        report[f"{name}_accuracy"] = sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)
        for k, p in zip(("one", "two"), parts):
            report[f"{name}_accuracy_{k}"] = p[0] / max(p[1], 1)
    report["failures"] = failures
    return report


def reads_as_scene(images, scenes: list[dict]) -> list[bool]:
    """Per image (B, 3, H, W) tensor in [-1, 1]: does the analyzer read it as its scene (KEY.json "scene")?"""
    u8 = images.detach().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [bool(match_scene(Scene.from_dict(s), find_objects(img))) for s, img in zip(scenes, u8)]


def judge_reconstructions(images, metas: list) -> list[tuple[str, bool]] | None:
    """`omni.tokenizers.evaluate`'s judge on shapes data: (one|two objects, kept the scene) per image;
    None when the batch is not shapes data (a sample's KEY.json lacks its "scene")."""
    scenes = [m["scene"] for m in metas if isinstance(m, dict) and "scene" in m]
    if len(scenes) != len(images):
        return None
    groups = ["one" if len(s["objects"]) == 1 else "two" for s in scenes]
    return list(zip(groups, reads_as_scene(images, scenes)))
