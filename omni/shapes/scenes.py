"""The shapes world: its vocabulary, scenes, how scenes are sampled, and the language about them.

A scene is one or two coloured shapes on a black background. One object carries a position
word; two objects carry a relation (the first-mentioned object relative to the second).
Captions and question/answer pairs come from a small template grammar; the analyzer in
`omni.shapes.analyzer` parses both images and captions back into `Scene`s.

Geometry is in fractions of the image side, so one scene renders at any resolution.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

COLORS: dict[str, tuple[int, int, int]] = {
    # Six saturated colours whose hues are exactly 60 degrees apart (red at 0), so that a
    # pixel's colour is its nearest hue sector, robust to the shading a VQ decoder adds.
    "red": (255, 0, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "magenta": (255, 0, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")

# Where a single object's centre sits for each position word: the middle of a cell of the
# 3x3 grid. The analyzer reads positions back by the same thirds.
POSITION_CENTERS: dict[str, tuple[float, float]] = {
    "left": (1 / 6, 1 / 2),
    "right": (5 / 6, 1 / 2),
    "top": (1 / 2, 1 / 6),
    "bottom": (1 / 2, 5 / 6),
    "center": (1 / 2, 1 / 2),
}
SIZE_RANGE = (0.24, 0.30)  # object side as a fraction of the image side
POSITION_JITTER = 0.06  # max offset of a single object's centre from its cell centre
MIN_GAP = 0.12  # min empty space between two objects' boxes along the relation's axis
MAX_CROSS_RATIO = 0.4  # |offset across the relation axis| <= this * |offset along it|

# Surface forms. The first phrase of each list is the canonical one the analyzer prints.
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "center": ("in the center", "in the middle"),
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
ONE_OBJECT_TEMPLATES = (
    "a {obj} {pos}",
    "there is a {obj} {pos}",
    "a {obj} is {pos}",
    "{pos} there is a {obj}",
)
TWO_OBJECT_TEMPLATES = ("a {a} {rel} a {b}", "there is a {a} {rel} a {b}", "a {a} is {rel} a {b}")

INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclass(frozen=True)
class ShapeObject:
    """One object: colour, shape, box centre (x right, y down) and side, in image fractions."""

    color: str
    shape: str
    x: float = 0.5
    y: float = 0.5
    size: float = 0.27

    @property
    def name(self) -> str:
        """`'red circle'`."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """One or two objects; `position` for one object, `relation` (objects[0] to objects[1]) for two."""

    objects: tuple[ShapeObject, ...]
    position: str | None = None
    relation: str | None = None

    def __post_init__(self):
        n = len(self.objects)
        if n == 1 and (self.position not in POSITIONS or self.relation is not None):
            raise ValueError(f"a one-object scene needs a position in {POSITIONS} and no relation")
        if n == 2 and (self.relation not in RELATIONS or self.position is not None):
            raise ValueError(f"a two-object scene needs a relation in {RELATIONS} and no position")
        if n not in (1, 2):
            raise ValueError(f"a scene has one or two objects, not {n}")
        for o in self.objects:
            if o.color not in COLORS or o.shape not in SHAPES:
                raise ValueError(f"unknown object {o.name!r}: colours {list(COLORS)}, shapes {list(SHAPES)}")

    def to_dict(self) -> dict:
        """JSON-ready form (what `KEY.json` holds under "scene")."""
        return {
            "objects": [asdict(o) for o in self.objects],
            "position": self.position,
            "relation": self.relation,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        """Inverse of `to_dict`."""
        objs = tuple(ShapeObject(**o) for o in d["objects"])
        return cls(objs, position=d.get("position"), relation=d.get("relation"))

    def describe(self) -> str:
        """Canonical caption (first phrasing of the grammar)."""
        if len(self.objects) == 1:
            return f"a {self.objects[0].name} {POSITION_PHRASES[self.position][0]}"
        a, b = self.objects
        return f"a {a.name} {RELATION_PHRASES[self.relation][0]} a {b.name}"


def relation_between(a: ShapeObject, b: ShapeObject) -> str:
    """Relation of `a` to `b` along the axis where they are further apart."""
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def position_of(obj: ShapeObject) -> str | None:
    """Position word of a box centre by thirds of the image, None for a corner cell."""
    col = 0 if obj.x < 1 / 3 else (2 if obj.x > 2 / 3 else 1)
    row = 0 if obj.y < 1 / 3 else (2 if obj.y > 2 / 3 else 1)
    return {(0, 1): "left", (2, 1): "right", (1, 0): "top", (1, 2): "bottom", (1, 1): "center"}.get(
        (col, row)
    )


# ----------------------------------------------------------------------------------------------
# Held-out attribute combinations (for compositional evaluation)


def parse_holdout(entries: Iterable[str]) -> list[frozenset[str]]:
    """Parse entries such as "red circle" or "blue left" into sets of attribute words.

    A scene is held out when one of its objects has every colour and shape word of an entry
    and, for entries with a position word, the scene is a one-object scene at that position.
    """
    known = set(COLORS) | set(SHAPES) | set(POSITIONS)
    out = []
    for entry in entries:
        words = frozenset(entry.lower().split())
        unknown = sorted(words - known)
        if not words or unknown:
            raise ValueError(
                f"bad holdout entry {entry!r}: unknown words {unknown}; use colours {list(COLORS)}, "
                f"shapes {list(SHAPES)} and positions {list(POSITIONS)}, e.g. 'red circle'"
            )
        out.append(words)
    return out


def is_held_out(scene: Scene, holdout: Sequence[frozenset[str]]) -> bool:
    """Whether the scene contains one of the held-out attribute combinations."""
    for words in holdout:
        for o in scene.objects:
            attrs = {o.color, o.shape}
            if len(scene.objects) == 1:
                attrs.add(scene.position)
            if words <= attrs:
                return True
    return False


# ----------------------------------------------------------------------------------------------
# Sampling


def sample_scene(rng: random.Random, two_object_fraction: float = 0.5) -> Scene:
    """Draw a random scene; two objects never share both colour and shape."""
    size = lambda: rng.uniform(*SIZE_RANGE)  # noqa: E731
    if rng.random() >= two_object_fraction:
        pos = rng.choice(POSITIONS)
        cx, cy = POSITION_CENTERS[pos]
        obj = ShapeObject(
            rng.choice(list(COLORS)),
            rng.choice(SHAPES),
            x=cx + rng.uniform(-POSITION_JITTER, POSITION_JITTER),
            y=cy + rng.uniform(-POSITION_JITTER, POSITION_JITTER),
            size=size(),
        )
        return Scene((obj,), position=pos)

    kinds = [(c, s) for c in COLORS for s in SHAPES]
    (ca, sa), (cb, sb) = rng.sample(kinds, 2)
    relation = rng.choice(RELATIONS)
    sa_, sb_ = size(), size()
    while True:  # rejection sampling: about 22 draws per scene, microseconds each
        (xa, ya), (xb, yb) = (_box_center(rng, sa_), _box_center(rng, sb_))
        along, across = (xb - xa, yb - ya) if relation in ("left of", "right of") else (yb - ya, xb - xa)
        if relation in ("right of", "below"):
            along = -along
        if along >= (sa_ + sb_) / 2 + MIN_GAP and abs(across) <= MAX_CROSS_RATIO * along:
            break
    a = ShapeObject(ca, sa, x=xa, y=ya, size=sa_)
    b = ShapeObject(cb, sb, x=xb, y=yb, size=sb_)
    return Scene((a, b), relation=relation)


def _box_center(rng: random.Random, size: float, margin: float = 0.02) -> tuple[float, float]:
    lo, hi = size / 2 + margin, 1 - size / 2 - margin
    return rng.uniform(lo, hi), rng.uniform(lo, hi)


# ----------------------------------------------------------------------------------------------
# Language


def caption(scene: Scene, rng: random.Random) -> str:
    """A caption for the scene in one of the grammar's phrasings."""
    if len(scene.objects) == 1:
        template = rng.choice(ONE_OBJECT_TEMPLATES)
        return template.format(obj=scene.objects[0].name, pos=rng.choice(POSITION_PHRASES[scene.position]))
    a, b = scene.objects
    template = rng.choice(TWO_OBJECT_TEMPLATES)
    return template.format(a=a.name, b=b.name, rel=rng.choice(RELATION_PHRASES[scene.relation]))


def questions(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    """Question/answer pairs about colour, shape, count, position and relation.

    Every question names its object so that its answer is unique in the scene; answers are
    single words (numbers spelled out, relations without "of").
    """
    objs = scene.objects
    qa: list[tuple[str, str]] = [("how many shapes are there?", NUMBER_WORDS[len(objs)])]
    for o in objs:
        if sum(p.shape == o.shape for p in objs) == 1:
            qa.append((f"what color is the {o.shape}?", o.color))
        if sum(p.color == o.color for p in objs) == 1:
            qa.append((f"what shape is the {o.color} object?", o.shape))
    color = rng.choice(list(COLORS))
    qa.append((f"how many {color} shapes are there?", NUMBER_WORDS[sum(o.color == color for o in objs)]))
    # A yes/no existence question, true half of the time.
    kinds = [(c, s) for c in COLORS for s in SHAPES]
    probe = rng.choice(objs).name if rng.random() < 0.5 else " ".join(rng.choice(kinds))
    qa.append((f"is there a {probe}?", "yes" if any(o.name == probe for o in objs) else "no"))
    if len(objs) == 1:
        qa.append((f"where is the {objs[0].name}?", scene.position))
    else:
        a, b = objs
        qa.append((f"where is the {a.name} relative to the {b.name}?", answer_word(scene.relation)))
        asked = scene.relation if rng.random() < 0.5 else rng.choice(RELATIONS)
        qa.append((f"is the {a.name} {asked} the {b.name}?", "yes" if asked == scene.relation else "no"))
    return [{"question": q, "answer": a} for q, a in qa]


QUESTION_KINDS = (
    "count",
    "color count",
    "color",
    "shape",
    "exists",
    "position",
    "relation",
    "relation yes/no",
)


def question_kind(question: str) -> str:
    """Which of `questions`' templates a question comes from (QUESTION_KINDS), e.g. "relation";
    "other" for a question outside them."""
    q = question.strip().lower()
    if q.startswith("how many shapes"):
        return "count"
    if q.startswith("how many"):
        return "color count"
    if q.startswith("what color"):
        return "color"
    if q.startswith("what shape"):
        return "shape"
    if q.startswith("is there"):
        return "exists"
    if " relative to " in q:
        return "relation"
    if q.startswith("where is"):
        return "position"
    if q.startswith("is the"):
        return "relation yes/no"
    return "other"


def answer_word(relation: str) -> str:
    """'left of' -> 'left': relations are answered with one word."""
    return relation.removesuffix(" of")
