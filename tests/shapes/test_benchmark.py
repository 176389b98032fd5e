"""The shapes benchmark of a model: it scores a perfect model 1.0, a useless one 0.0, and runs on
a real (tiny) release folder from the command line."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from omni.commands import main as omni
from omni.shapes.benchmark import benchmark_model, validation_samples
from omni.shapes.render import render


class Oracle:
    """A stand-in pipeline that knows the validation set: right (or, with `wrong`, useless) answers."""

    def __init__(self, samples, wrong=False):
        self.by_caption = {s["caption"]: s for s in samples}
        self.by_image = {s["image"].tobytes(): s for s in samples}
        self.wrong = wrong
        self.generation = {}

    def generate_images(self, prompts, seed=0):
        if self.wrong:
            return [Image.new("RGB", (32, 32)) for _ in prompts]  # empty: never the scene
        return [render(self.by_caption[p]["scene"], 32) for p in prompts]

    def caption(self, images):
        return ["nothing here" if self.wrong else self.by_image[i.tobytes()]["caption"] for i in images]

    def answer(self, images, questions):
        out = []
        for image, question in zip(images, questions):
            qa = {q["question"]: q["answer"] for q in self.by_image[image.tobytes()]["qa"]}
            out.append("purple" if self.wrong else qa[question])
        return out


@pytest.fixture(scope="module")
def val(shapes_dir):
    return str(shapes_dir / "val-*.tar")


def test_a_perfect_model_scores_one_and_a_useless_one_zero(val):
    samples = validation_samples(val, 20)
    good = benchmark_model(Oracle(samples), val, 20, batch_size=8, progress=False)
    bad = benchmark_model(Oracle(samples, wrong=True), val, 20, batch_size=8, progress=False)
    for key in ("t2i_accuracy", "caption_accuracy", "vqa_accuracy"):
        for part in ("", "_one", "_two"):
            assert good[key + part] == 1.0, key + part
            assert bad[key + part] == 0.0, key + part
    assert good["n"] == 20 and good["vqa_questions"] == sum(len(s["qa"]) for s in samples)
    assert good["images_per_second"] > 0 and good["captions_per_second"] > 0
    assert not [key for key in good if "heldout" in key]  # nothing held out in these shards


def test_command_line_on_a_tiny_release(tiny_releases, val, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--model", str(tiny_releases["mask"]), "--shards", val, "--n", "6", "--batch-size", "4"]
    assert omni(["shapes", "benchmark", *argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    for key in ("t2i_accuracy", "t2i_accuracy_one", "t2i_accuracy_two", "caption_accuracy",
                "caption_accuracy_one", "caption_accuracy_two", "vqa_accuracy"):  # fmt: skip
        assert report[key] is None or 0.0 <= report[key] <= 1.0, key
    assert report["n"] == 6
    assert report["vqa_questions"] == sum(len(s["qa"]) for s in validation_samples(val, 6))
    assert set(report["examples"]) == {"t2i", "caption", "vqa"}
    assert report["settings"].get("guidance_scale") is None  # the tiny release keeps the defaults
    # Sampling settings from the command line replace the folder's for this run
    extra = ["--tasks", "t2i", "--guidance", "0.5", "--mask-steps", "3", "--temperature", "0"]
    assert omni(["shapes", "benchmark", *argv, *extra, "--out", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert (settings["guidance_scale"], settings["mask_steps"], settings["temperature"]) == (0.5, 3, 0.0)


def test_command_line_errors(tiny_releases, val, tmp_path, capsys):
    bench = ["shapes", "benchmark"]
    assert omni([*bench, "--model", str(tmp_path / "missing"), "--shards", val]) == 2
    assert "error: " in (err := capsys.readouterr().err) and "missing" in err
    assert (
        omni([*bench, "--model", str(tiny_releases["mask"]), "--shards", str(tmp_path / "none-*.tar")]) == 2
    )
    assert "none-" in capsys.readouterr().err
    assert omni([*bench, "--model", str(tiny_releases["mask"]), "--shards", val, "--guidance", "-1"]) == 2
    assert "guidance_scale" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argument syntax: argparse's usage error
        omni([*bench, "--model", str(tiny_releases["mask"]), "--tasks", "t2i,poetry"])
    with pytest.raises(SystemExit):
        omni(bench)


def test_held_out_combinations_are_reported_apart(tmp_path):
    """Shards made with --holdout: the held-out samples get their own figures (here the oracle is
    right on seen scenes only, so heldout 0 and seen 1); shards without get no such keys."""
    from omni.shapes.render import build

    build(
        tmp_path,
        train=0,
        val=40,
        size=32,
        seed=0,
        per_shard=40,
        holdout=["red circle", "blue"],
        progress=False,
    )
    val = str(tmp_path / "val-*.tar")
    samples = validation_samples(val, 40)
    held = [s for s in samples if s["heldout"]]
    assert 0 < len(held) < len(samples)

    class SeenOnly(Oracle):
        def caption(self, images):
            right = super().caption(images)
            return ["nothing" if self.by_image[i.tobytes()]["heldout"] else c for i, c in zip(images, right)]

    report = benchmark_model(SeenOnly(samples), val, 40, batch_size=8, tasks=("caption",), progress=False)
    assert report["caption_accuracy_heldout"] == 0.0 and report["caption_accuracy_seen"] == 1.0
    assert report["caption_accuracy_heldout_n"] == len(held)
    assert report["caption_accuracy"] == pytest.approx(1 - len(held) / len(samples))


def test_failures_are_counted_by_kind_and_vqa_is_split_by_question(val):
    """An oracle that gets every relation backwards: its caption failures are all "relation", the
    empty images of two-object prompts are "objects", and VQA is wrong on relation questions only."""
    from omni.shapes.scenes import INVERSE_RELATION, Scene, question_kind

    samples = validation_samples(val, 20)
    two = [s for s in samples if len(s["scene"].objects) == 2]
    assert two

    class Backwards(Oracle):
        def generate_images(self, prompts, seed=0):
            images = super().generate_images(prompts, seed)
            return [Image.new("RGB", (32, 32)) if " of " in p or "above" in p or "below" in p or "under" in p
                    else i for p, i in zip(prompts, images)]  # fmt: skip

        def caption(self, images):
            out = []
            for image in images:
                scene = self.by_image[image.tobytes()]["scene"]
                if scene.relation:
                    scene = Scene(scene.objects, relation=INVERSE_RELATION[scene.relation])
                out.append(scene.describe())
            return out

        def answer(self, images, questions):
            right = super().answer(images, questions)
            return [a if question_kind(q) not in ("relation", "relation yes/no") else "purple"
                    for a, q in zip(right, questions)]  # fmt: skip

    report = benchmark_model(Backwards(samples), val, 20, batch_size=8, progress=False)
    assert report["caption_failures"] == {"relation": len(two)}
    assert report["t2i_failures"] == {"objects": len(two)}
    by_question = report["vqa_by_question"]
    assert by_question["relation"] == by_question["relation yes/no"] == 0.0
    assert {k: v for k, v in by_question.items() if "relation" not in k} == dict.fromkeys(
        set(by_question) - {"relation", "relation yes/no"}, 1.0
    )
    assert "other" not in by_question and {"count", "color", "shape", "exists"} <= set(by_question)


class GroundedOracle(Oracle):
    """The oracle of a grounded model: it plans the true layout (or, wrong, other objects in a
    corner box), draws the scene, and finds each named object's true box (or the whole image)."""

    frame = (32, 32)

    def plan(self, prompts, seed=0):
        from omni.grounding import Grounded
        from omni.shapes.benchmark import object_box

        out = []
        for p in prompts:
            objects = self.by_caption[p]["scene"].objects
            boxes = [
                ("purple blob", (0.0, 0.0, 4.0, 4.0)) if self.wrong else (o.name, object_box(o, 32))
                for o in objects
            ]
            out.append(Grounded(p, boxes))
        return out

    def generate_images(self, prompts, seed=0, layout=None):
        assert layout is None or len(layout) == len(prompts)
        return super().generate_images(prompts, seed=seed)

    def answer(self, images, questions, grounded=False):
        from omni.grounding import Grounded

        answers = super().answer(images, questions)
        return [Grounded(a, []) for a in answers] if grounded else answers

    def ground(self, images, phrases, seed=0):
        from omni.shapes.benchmark import object_box

        out = []
        for image, phrase in zip(images, phrases):
            scene = self.by_image[image.tobytes()]["scene"]
            (obj,) = [o for o in scene.objects if o.name == phrase]
            out.append((0.0, 0.0, 32.0, 32.0) if self.wrong else object_box(obj, 32))
        return out


def test_grounding_and_layout_first_figures_of_a_perfect_and_a_useless_model(val):
    """grounding_accuracy / grounding_iou on perfect and useless boxes; the plan's correctness
    (plan_accuracy) apart from the image's (t2i_plan_accuracy)."""
    samples = validation_samples(val, 20)
    tasks = ("plan", "ground", "gvqa")
    good = benchmark_model(GroundedOracle(samples), val, 20, batch_size=8, tasks=tasks, progress=False)
    bad = benchmark_model(
        GroundedOracle(samples, wrong=True), val, 20, batch_size=8, tasks=tasks, progress=False
    )
    assert good["grounding_accuracy"] == 1.0 and good["grounding_iou"] == pytest.approx(1.0)
    assert bad["grounding_accuracy"] == 0.0 and bad["grounding_iou"] < 0.15
    assert good["grounding_cases"] == sum(len(s["scene"].objects) for s in samples)
    for part in ("", "_one", "_two"):
        assert good["plan_accuracy" + part] == 1.0 and good["t2i_plan_accuracy" + part] == 1.0
        assert bad["plan_accuracy" + part] == 0.0  # a useless plan, however well drawn
    assert bad["t2i_plan_accuracy"] == 0.0 and bad["plan_failures"]
    assert good["vqa_grounded_accuracy"] == 1.0 and bad["vqa_grounded_accuracy"] == 0.0
