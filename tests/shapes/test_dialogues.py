"""Shapes dialogues: reproducible, their edits keep the old scene and add the requested object,
and the analyzer's edit score tells an edit from a redraw."""

from __future__ import annotations

import io
import json

from PIL import Image

from omni.commands import main
from omni.shapes.analyzer import score_edit, score_image
from omni.shapes.dialogues import make_dialogue
from omni.shapes.render import render
from omni.shapes.scenes import Scene, ShapeObject, relation_between


def test_dialogues_are_reproducible_and_their_images_show_their_scenes():
    assert make_dialogue(0, "train", 7) == make_dialogue(0, "train", 7) != make_dialogue(1, "train", 7)
    kinds = {"draw": 0, "look": 0}
    for i in range(60):
        meta, images = make_dialogue(0, "val", i)
        kinds[meta["kind"]] += 1
        scenes = [Scene.from_dict(d) for d in meta["scenes"]]
        pictures = [Image.open(io.BytesIO(png)) for png in images]
        placeholders = sum(t["value"].count("<image>") for t in meta["conversations"])
        assert placeholders == len(images) == len(scenes)
        for turn in meta["turns"]:
            if turn["kind"] == "draw":
                assert score_image(scenes[turn["image"]], pictures[turn["image"]])
            if turn["kind"] == "edit":
                before, after = scenes[turn["before"]], scenes[turn["image"]]
                new, old = after.objects
                assert old == before.objects[0] and relation_between(new, old) == after.relation
                assert score_edit(before, after, pictures[turn["image"]])
    assert min(kinds.values()) >= 15


def test_an_edit_that_moves_the_old_object_is_not_an_edit():
    circle = ShapeObject("red", "circle", x=1 / 6, y=0.5, size=0.27)
    before = Scene((circle,), position="left")
    square = ShapeObject("blue", "square", x=0.5, y=0.5, size=0.27)
    after = Scene((square, circle), relation="right of")
    assert score_edit(before, after, render(after, 32))
    # The requested scene, but drawn anew: the circle moved from the left to the centre.
    moved = Scene((ShapeObject("blue", "square", x=5 / 6, y=0.5, size=0.27),
                   ShapeObject("red", "circle", x=0.5, y=0.5, size=0.27)), relation="right of")  # fmt: skip
    image = render(moved, 32)
    assert score_image(after, image)
    result = score_edit(before, after, image)
    assert not result and result.reason == "moved: the red circle was left, is center"


def test_the_command_writes_dialogue_shards(tmp_path, capsys):
    assert main(["shapes", "dialogues", "--out", str(tmp_path / "d"), "--train", "3", "--val", "2"]) == 0
    info = json.loads((tmp_path / "d" / "info.json").read_text())
    assert info["train"] == 3 and (tmp_path / "d" / "val-000000.tar").is_file()
    assert main(["shapes", "dialogues", "--out", str(tmp_path / "e"), "--size", "8"]) == 2
    assert "too small" in capsys.readouterr().err
