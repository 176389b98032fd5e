"""The shapes analyzer is the ground truth of every quality figure: it must be exact and strict."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from omni.shapes.analyzer import (
    find_objects,
    label_components,
    match_scene,
    parse_caption,
    parse_image,
    score_caption,
    score_image,
)
from omni.shapes.render import make_sample, render
from omni.shapes.scenes import Scene, ShapeObject


def box_blur3(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32)
    p = np.pad(a, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = a.shape[:2]
    return np.rint(sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9).astype(
        np.uint8
    )


def ground_truth(n, size=32, seed=11, split="val"):
    for i in range(n):
        scene, text, _, png, _ = make_sample(seed, split, i, size)
        yield scene, text, Image.open(io.BytesIO(png))


def test_exact_on_1000_ground_truth_images_and_99_percent_when_blurred():
    exact = blurred = 0
    failures = []
    for scene, text, img in ground_truth(1000):
        r = match_scene(scene, find_objects(img))
        exact += bool(r)
        if not r:
            failures.append(r.reason)
        blurred += bool(match_scene(scene, find_objects(box_blur3(img))))
        assert score_caption(scene, text), text
    assert exact == 1000, failures[:5]
    assert blurred >= 990, blurred


@pytest.mark.parametrize("size,n", [(64, 60), (256, 12)])
def test_exact_at_larger_sizes(size, n):
    for _, text, img in ground_truth(n, size=size):
        assert score_image(text, img), text
        assert score_image(text, box_blur3(img)), text


def _one_and_two_object_scenes():
    one = two = None
    for scene, _, _ in ground_truth(50):
        if len(scene.objects) == 1 and one is None:
            one = scene
        if len(scene.objects) == 2 and two is None:
            two = scene
    return one, two


def _replace(scene: Scene, i: int, **kw) -> Scene:
    objs = list(scene.objects)
    objs[i] = dataclasses.replace(objs[i], **kw)
    return dataclasses.replace(scene, objects=tuple(objs))


def test_detects_each_kind_of_error():
    one, two = _one_and_two_object_scenes()
    a, b = two.objects
    other_color = next(c for c in ("red", "green", "blue") if c not in (a.color, b.color))
    other_shape = next(s for s in ("circle", "square", "triangle") if s != a.shape)
    image = render(two, 32)
    assert match_scene(two, find_objects(image))
    cases = {
        "swapped colours": (_replace(_replace(two, 0, color=b.color), 1, color=a.color), "objects"),
        "wrong colour": (_replace(two, 0, color=other_color), "objects"),
        "wrong shape": (_replace(two, 0, shape=other_shape), "objects"),
        "wrong relation": (
            dataclasses.replace(
                two,
                relation={"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[
                    two.relation
                ],
            ),
            "relation",
        ),
    }
    for name, (expected, reason) in cases.items():
        if expected == two:
            continue  # swapping two equal colours changes nothing
        result = match_scene(expected, find_objects(image))
        assert not result, name
        assert result.reason.startswith(reason), (name, result.reason)
    # Missing object: the image shows only the first object of the scene.
    only_a = render(Scene((a,), position="center"), 32)
    assert match_scene(two, find_objects(only_a)).reason.startswith("objects")
    # Extra object: a one-object prompt judged against a two-object image.
    assert not match_scene(one, find_objects(image))
    # Wrong position.
    moved = dataclasses.replace(one, position="right" if one.position != "right" else "left")
    assert match_scene(moved, find_objects(render(one, 32))).reason.startswith("position")


def test_swapped_colour_in_an_image_is_caught():
    scene = Scene(
        (ShapeObject("red", "circle", 0.25, 0.5), ShapeObject("blue", "square", 0.75, 0.5)),
        relation="left of",
    )
    swapped = Scene(
        (ShapeObject("blue", "circle", 0.25, 0.5), ShapeObject("red", "square", 0.75, 0.5)),
        relation="left of",
    )
    assert score_image("a red circle to the left of a blue square", render(scene, 32))
    assert not score_image("a red circle to the left of a blue square", render(swapped, 32))
    assert not score_image("a blue square to the left of a red circle", render(scene, 32))
    assert score_image("a blue square to the right of a red circle", render(scene, 32))


def test_blank_noise_and_blob_images_do_not_score():
    assert find_objects(np.zeros((32, 32, 3), np.uint8)) == []
    assert parse_image(np.zeros((32, 32, 3), np.uint8)) is None
    grey_noise = np.repeat(np.random.default_rng(0).integers(0, 255, (32, 32, 1), dtype=np.uint8), 3, -1)
    assert find_objects(grey_noise) == []
    bar = np.zeros((32, 32, 3), np.uint8)
    bar[14:18, 2:30] = (255, 0, 0)  # a long thin bar is no circle, square or triangle
    (obj,) = find_objects(bar)
    assert obj.shape == "unknown"
    assert not score_image("a red square in the center", bar)
    assert parse_image(bar) is None


def test_parse_image_reads_position_and_relation():
    for scene, _, img in ground_truth(40):
        parsed = parse_image(img)
        assert parsed is not None
        if len(scene.objects) == 1:
            assert parsed.position == scene.position
        else:
            assert {o.name for o in parsed.objects} == {o.name for o in scene.objects}


def test_caption_parser_phrasings_and_rejections():
    s = parse_caption("There is a Red circle, on the left.")
    assert s.objects[0].name == "red circle" and s.position == "left"
    assert parse_caption("in the middle there is a green square").position == "center"
    s = parse_caption("a blue triangle is to the right of a cyan square")
    assert [o.name for o in s.objects] == ["blue triangle", "cyan square"] and s.relation == "right of"
    assert parse_caption("a yellow circle under a magenta square").relation == "below"
    for bad in (
        "",
        "a purple circle on the left",
        "two circles",
        "a red circle on the left of",
        "a red circle",
    ):
        assert parse_caption(bad) is None, bad
    scene = Scene((ShapeObject("red", "circle", 1 / 6, 0.5),), position="left")
    assert score_caption(scene, "a red circle on the left")
    assert not score_caption(scene, "a red circle on the right").ok
    assert not score_caption(scene, "a red square on the left").ok
    assert "grammar" in score_caption(scene, "hello").reason


def test_label_components_matches_a_flood_fill():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = rng.random((17, 23)) < 0.45
        labels = label_components(mask)
        assert (labels > 0).sum() == mask.sum()
        # Reference: breadth-first flood fill with 8-connectivity.
        seen = np.zeros_like(mask)
        count = 0
        for y, x in zip(*np.nonzero(mask)):
            if seen[y, x]:
                continue
            count += 1
            stack, comp = [(y, x)], set()
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                comp.add(labels[cy, cx])
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < 17 and 0 <= nx < 23 and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            assert len(comp) == 1  # one label per component
        assert labels.max() == count  # distinct components get distinct labels
    assert label_components(np.ones((4, 4), bool)).max() == 1


def test_cli_self_check_on_shards(shapes_dir, capsys):
    from omni.commands import main as omni

    check = ["shapes", "benchmark"]  # without --model: the analyzer on the shards' ground truth
    assert omni([*check, "--shards", str(shapes_dir / "val-*.tar"), "--blur-radius", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 50
    assert report["image_accuracy"] >= 0.99 and report["caption_accuracy"] == 1.0
    assert omni([*check, "--shards", str(shapes_dir / "nothing-*.tar")]) == 2
