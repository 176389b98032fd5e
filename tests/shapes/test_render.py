"""The shapes dataset: real webdataset shards, deterministic, with held-out combinations."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile

import pytest
from PIL import Image

from omni.shapes import scenes
from omni.shapes.analyzer import check_answer, parse_caption
from omni.shapes.render import build, make_sample
from omni.shapes.scenes import Scene, ShapeObject, is_held_out, parse_holdout, sample_scene


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}


def test_cli_writes_png_txt_json_triples(tmp_path):
    out = tmp_path / "s"
    cmd = [
        sys.executable,
        "-m",
        "omni",
        "shapes",
        "make",
        "--out",
        str(out),
        "--train",
        "25",
        "--val",
        "10",
        "--per-shard",
        "10",
        "--quiet",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "wrote 25 train + 10 val samples" in res.stdout
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "val-000000.tar"]
    listing = subprocess.run(
        ["tar", "-tf", str(out / "train-000002.tar")], capture_output=True, text=True
    ).stdout.split()
    keys = sorted({n.split(".")[0] for n in listing})
    assert len(keys) == 5 and sorted(listing) == sorted(
        f"{k}.{e}" for k in keys for e in ("json", "png", "txt")
    )
    files = _members(out / "val-000000.tar")
    key = "000000003"
    img = Image.open(io.BytesIO(files[f"{key}.png"]))
    assert img.mode == "RGB" and img.size == (32, 32)
    meta = json.loads(files[f"{key}.json"])
    scene = Scene.from_dict(meta["scene"])
    assert parse_caption(files[f"{key}.txt"].decode()) is not None
    assert len(scene.objects) in (1, 2) and meta["qa"]
    info = json.loads((out / "info.json").read_text())
    assert info["counts"] == {"train": 25, "val": 10} and info["size"] == 32


def test_cli_rejects_bad_values(tmp_path):
    for args, msg in (
        (["--holdout", "purple circle"], "unknown words ['purple']"),
        (["--size", "4"], "too small"),
        (["--two-object-fraction", "2"], "--two-object-fraction"),
    ):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "omni",
                "shapes",
                "make",
                "--out",
                str(tmp_path),
                "--train",
                "1",
                "--val",
                "1",
                "--quiet",
                *args,
            ],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 2 and msg in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_same_seed_gives_identical_shards_and_other_seeds_differ(tmp_path):
    digest = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build(tmp_path / name, train=20, val=5, seed=seed, progress=False)
        digest[name] = hashlib.sha256((tmp_path / name / "train-000000.tar").read_bytes()).hexdigest()
    assert digest["a"] == digest["b"]
    assert digest["a"] != digest["c"]


def test_train_and_val_use_different_streams():
    train = [make_sample(0, "train", i, 32) for i in range(50)]
    val = [make_sample(0, "val", i, 32) for i in range(50)]
    assert {t[3] for t in train}.isdisjoint({v[3] for v in val})  # no identical image
    assert sum(t[0] == v[0] for t, v in zip(train, val)) == 0


def test_rebuild_removes_stale_shards(tmp_path):
    build(tmp_path, train=30, val=5, per_shard=10, progress=False)
    build(tmp_path, train=10, val=5, per_shard=10, progress=False)
    assert sorted(p.name for p in tmp_path.glob("train-*.tar")) == ["train-000000.tar"]
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("size", [32, 64, 256])
def test_sizes_render_the_same_scene(size):
    scene, _, _, png, _ = make_sample(5, "val", 1, size)
    img = Image.open(io.BytesIO(png))
    assert img.size == (size, size) and img.mode == "RGB"
    assert make_sample(5, "val", 1, 32)[0] == scene  # the scene does not depend on the resolution


def test_scene_distribution_covers_the_grammar():
    rng = random.Random(0)
    drawn = [sample_scene(rng) for _ in range(2000)]
    ones = [s for s in drawn if len(s.objects) == 1]
    twos = [s for s in drawn if len(s.objects) == 2]
    assert 0.4 < len(ones) / len(drawn) < 0.6
    assert {s.position for s in ones} == set(scenes.POSITIONS)
    assert {s.relation for s in twos} == set(scenes.RELATIONS)
    assert {o.color for s in drawn for o in s.objects} == set(scenes.COLORS)
    assert {o.shape for s in drawn for o in s.objects} == set(scenes.SHAPES)
    assert all(s.objects[0].name != s.objects[1].name for s in twos)
    for s in twos:  # relations are unambiguous: the stated axis dominates
        assert scenes.relation_between(*s.objects) == s.relation
    for s in ones:
        assert scenes.position_of(s.objects[0]) == s.position


def test_captions_parse_back_to_their_scene():
    rng = random.Random(1)
    phrasings = set()
    for i in range(500):
        scene, text, _, _, _ = make_sample(2, "train", i, 32)
        parsed = parse_caption(text)
        assert parsed is not None, text
        assert [o.name for o in parsed.objects] == [o.name for o in scene.objects]
        assert (parsed.position, parsed.relation) == (scene.position, scene.relation), text
        phrasings.add(text.split(" a ")[0] if " a " in text else text[:5])
    assert len(phrasings) >= 3
    assert scenes.caption(scenes.Scene((ShapeObject("red", "circle"),), position="left"), rng)


def test_questions_cover_every_kind_and_are_consistent():
    from omni.shapes.scenes import QUESTION_KINDS, question_kind

    kinds = set()
    for i in range(300):
        scene, _, qa, _, _ = make_sample(0, "train", i, 32)
        for pair in qa:
            q, a = pair["question"], pair["answer"]
            kind = question_kind(q)
            kinds.add(kind)
            if kind == "color":
                shape = q.removeprefix("what color is the ").removesuffix("?")
                assert [o.color for o in scene.objects if o.shape == shape] == [a]
            elif kind == "position":
                assert a == scene.position
            assert a and " " not in a  # one-word answers
    assert kinds == set(QUESTION_KINDS) - {"other"}
    assert question_kind("why is the sky blue?") == "other"


def test_holdout_keeps_combinations_out_of_training(tmp_path):
    build(
        tmp_path,
        train=400,
        val=200,
        seed=1,
        per_shard=1000,
        holdout=["red circle", "blue left"],
        progress=False,
    )
    combos = parse_holdout(["red circle", "blue left"])
    train = [json.loads(v) for k, v in _members(tmp_path / "train-000000.tar").items() if k.endswith(".json")]
    val = [json.loads(v) for k, v in _members(tmp_path / "val-000000.tar").items() if k.endswith(".json")]
    assert len(train) == 400
    assert not any(is_held_out(Scene.from_dict(m["scene"]), combos) for m in train)
    flagged = [m for m in val if m["heldout"]]
    assert flagged, "validation should contain held-out combinations"
    assert all(m["heldout"] == is_held_out(Scene.from_dict(m["scene"]), combos) for m in val)
    with pytest.raises(ValueError, match="unknown words"):
        parse_holdout(["red ball"])


def test_answers_are_checked_after_normalisation():
    assert check_answer("Left.", "left")
    assert check_answer("to the left", "left")
    assert check_answer("2", "two")
    assert check_answer("under", "below")
    assert check_answer("the middle", "center")
    assert not check_answer("right", "left")
    assert not check_answer("", "one")


def test_every_object_carries_its_box_in_pixels(tmp_path):
    """KEY.json's objects (the grounded tasks' data): each box holds its object's pixels and
    little else, at the rendered size."""
    import io
    import json

    import numpy as np
    from PIL import Image

    from omni.data.shards import iterate_samples
    from omni.shapes.render import build

    build(tmp_path, train=0, val=30, size=64, seed=3, per_shard=30, progress=False)
    for sample in iterate_samples(str(tmp_path / "val-*.tar")):
        meta = json.loads(sample["json"])
        assert meta["image_size"] == [64, 64] and len(meta["objects"]) == len(meta["scene"]["objects"])
        lit = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB")).max(-1) > 40
        inside = np.zeros_like(lit)
        for obj, scene_obj in zip(meta["objects"], meta["scene"]["objects"]):
            assert obj["name"] == f"{scene_obj['color']} {scene_obj['shape']}"
            x0, y0, x1, y1 = obj["box"]
            inside[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
        assert not (lit & ~inside).any()  # no lit pixel outside the boxes
