"""Boxes and points as location tokens: the one place that turns coordinates into `<|loc_i|>` ids
and back (PaliGemma / Kosmos-2 style), and grounded text (words with boxes) into ids and back.

A vocabulary laid out with `locations=B` (omni.vocab) has B location tokens per axis; coordinate
v of an image side S falls in bin `min(B - 1, floor(v / S * B))` and comes back as that bin's
centre, so any box returns within half a bin (S / 2B pixels) of where it was. A box
(x0, y0, x1, y1) in pixels is four tokens in that order, a point (x, y) two.

    ids = box_ids(vocab, (4.0, 10.0, 13.0, 19.0), size=(32, 32))
    box = ids_box(vocab, ids, size=(32, 32))

Grounded text is a list of parts, strings and boxes in order ("a red circle", box, " left of a
blue square", box): `grounded_ids` renders it with a text tokenizer, `parse_grounded` reads
generated ids back into text and (phrase, box) pairs, the phrase being the words since the
previous box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (x right, y down)


def to_bin(value: float, side: float, bins: int) -> int:
    """The bin of a coordinate on an image side of `side` pixels (values outside are clamped)."""
    if not math.isfinite(value):
        raise ValueError(f"a coordinate must be a finite number, got {value}")
    return min(bins - 1, max(0, math.floor(value / side * bins)))


def from_bin(index: int, side: float, bins: int) -> float:
    """The centre of bin `index`, in pixels."""
    return (index + 0.5) / bins * side


def box_bins(box: Sequence[float], size: tuple[float, float], bins: int) -> list[int]:
    """(x0, y0, x1, y1) in pixels of an image of `size` (width, height) -> four bin indices."""
    x0, y0, x1, y1 = check_box(box)
    w, h = size
    return [to_bin(x0, w, bins), to_bin(y0, h, bins), to_bin(x1, w, bins), to_bin(y1, h, bins)]


def bins_box(indices: Sequence[int], size: tuple[float, float], bins: int) -> Box:
    """Four bin indices -> (x0, y0, x1, y1) in pixels (bin centres)."""
    w, h = size
    x0, y0, x1, y1 = indices
    return (from_bin(x0, w, bins), from_bin(y0, h, bins), from_bin(x1, w, bins), from_bin(y1, h, bins))


def check_box(box: Sequence[float]) -> Box:
    """`box` as four floats with x1 >= x0 and y1 >= y0, else a ValueError saying what is wrong."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"a box is four numbers (x0, y0, x1, y1) in pixels, got {box!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"a box must hold finite numbers, got {box!r}")
    if x1 < x0 or y1 < y0:
        raise ValueError(f"a box (x0, y0, x1, y1) needs x1 >= x0 and y1 >= y0, got {box!r}")
    return x0, y0, x1, y1


def box_ids(vocab, box: Sequence[float], size: tuple[float, float]) -> list[int]:
    """A box in pixels -> its four location token ids in `vocab`."""
    bins = vocab.location_bins
    return [vocab.location_id(i) for i in box_bins(box, size, bins)]


def ids_box(vocab, ids: Sequence[int], size: tuple[float, float]) -> Box:
    """Four location token ids -> a box in pixels (corners in order, whatever order they came in)."""
    x0, y0, x1, y1 = bins_box([vocab.location_index(i) for i in ids], size, vocab.location_bins)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def point_ids(vocab, point: Sequence[float], size: tuple[float, float]) -> list[int]:
    """A point (x, y) in pixels -> its two location token ids in `vocab`."""
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError):
        raise ValueError(f"a point is two numbers (x, y) in pixels, got {point!r}") from None
    w, h = size
    bins = vocab.location_bins
    return [vocab.location_id(to_bin(x, w, bins)), vocab.location_id(to_bin(y, h, bins))]


def ids_point(vocab, ids: Sequence[int], size: tuple[float, float]) -> tuple[float, float]:
    """Two location token ids -> a point (x, y) in pixels (bin centres)."""
    (x, y), (w, h), bins = (vocab.location_index(i) for i in ids), size, vocab.location_bins
    return from_bin(x, w, bins), from_bin(y, h, bins)


def resized_box(box: Sequence[float], source: tuple[int, int], resolution: int) -> Box | None:
    """Where a box of a `source` (width, height) image lands once the image is resized to
    `resolution` on its shorter side and centre-cropped square (omni.data.images.to_tensor);
    clipped to the crop, None when less than half of it is left."""
    x0, y0, x1, y1 = check_box(box)
    w, h = source
    scale = resolution / min(w, h)
    left, top = (w * scale - resolution) / 2, (h * scale - resolution) / 2
    moved = (x0 * scale - left, y0 * scale - top, x1 * scale - left, y1 * scale - top)
    clipped = (
        max(0.0, moved[0]),
        max(0.0, moved[1]),
        min(float(resolution), moved[2]),
        min(float(resolution), moved[3]),
    )
    area = (moved[2] - moved[0]) * (moved[3] - moved[1])
    kept = max(0.0, clipped[2] - clipped[0]) * max(0.0, clipped[3] - clipped[1])
    if area > 0 and kept < area / 2:
        return None
    return clipped


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# Grounded text: words with boxes


@dataclass(frozen=True)
class Grounded:
    """Text with boxes: `text` without the location tokens, and each box with the phrase before it."""

    text: str
    boxes: list[tuple[str, Box]]

    def to_dict(self) -> dict:
        return {"text": self.text, "objects": [{"name": p, "box": list(b)} for p, b in self.boxes]}


def grounded_ids(vocab, encode, parts: Sequence, size: tuple[float, float]) -> list[int]:
    """Ids of grounded text `parts` (strings and boxes in pixels, in order); `encode` is the text
    tokenizer's str -> ids. Each string is encoded on its own, so keep its spaces ("a red circle",
    box, " left of a blue square")."""
    ids: list[int] = []
    for part in parts:
        ids += list(encode(part)) if isinstance(part, str) else box_ids(vocab, part, size)
    return ids


def parse_grounded(vocab, decode, ids: Sequence[int], size: tuple[float, float]) -> Grounded:
    """Generated ids -> text and (phrase, box) pairs; `decode` is the text tokenizer's ids -> str.
    Location tokens come in fours; a run of another length is dropped (the model's slip)."""
    text_parts: list[str] = []
    boxes: list[tuple[str, Box]] = []
    words: list[int] = []
    locs: list[int] = []
    for i in ids:
        if vocab.is_location_id(i):
            locs.append(i)
            if len(locs) == 4:
                text_parts.append(decode(words))
                boxes.append((decode(words).strip(), ids_box(vocab, locs, size)))
                words, locs = [], []
        else:
            locs = []  # a run of fewer than four location tokens is dropped
            words.append(i)
    text_parts.append(decode(words))
    return Grounded(" ".join("".join(text_parts).split()), boxes)


def phrase_text(phrase: str) -> str:
    """A phrase as grounded documents write it: one space before it, as inside a sentence, so a
    byte-level BPE gives its words the tokens they have in captions and questions (" red", not
    "re" "d")."""
    return " " + " ".join(phrase.split())


def layout_parts(objects: Sequence[tuple[str, Sequence[float]]]) -> list:
    """A layout as grounded text parts: each name (`phrase_text`) followed by its box
    (" red circle", box, " blue square", box), in the order given."""
    parts: list = []
    for name, box in objects:
        parts += [phrase_text(name), check_box(box)]
    return parts


def grounded_caption_parts(caption: str, objects: Sequence[tuple[str, Sequence[float]]]) -> list | None:
    """`caption` as grounded text parts, each object's box right after the first unclaimed
    mention of its name (case-insensitive); None when a name is not in the caption."""
    lower = caption.lower()
    found: list[tuple[int, Box]] = []
    taken: set[int] = set()
    for name, box in objects:
        needle, start = name.strip().lower(), 0
        while True:
            at = lower.find(needle, start) if needle else -1
            if at < 0:
                return None
            end = at + len(needle)
            if end not in taken:
                break
            start = at + 1
        taken.add(end)
        found.append((end, check_box(box)))
    parts: list = []
    previous = 0
    for end, box in sorted(found):
        parts += [caption[previous:end], box]
        previous = end
    if caption[previous:]:
        parts.append(caption[previous:])
    return parts
