"""The Python API on a tiny release folder: every direction, input handling, and clear errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import eager_to_draw
from PIL import Image

import omni


@pytest.fixture(scope="module")
def pipes(tiny_releases):
    return {mode: omni.load_pretrained(folder) for mode, folder in tiny_releases.items()}


def same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("mode", ["mask", "ar"])
def test_text_to_image_is_seeded_and_sized(pipes, mode):
    pipe = pipes[mode]
    images = pipe.generate_images(["a red circle", ""], seed=1)
    assert len(images) == 2 and all(isinstance(i, Image.Image) and i.size == (32, 32) for i in images)
    again = pipe.generate_images(["a red circle", ""], seed=1)
    assert all(same(a, b) for a, b in zip(images, again))
    batched = pipe.generate_images(["a red circle", ""], seed=1, batch_size=1)  # same seed, other batching
    assert len(batched) == 2


@pytest.mark.parametrize("mode", ["mask", "encoder"])  # read as codes, and by the understanding encoder
def test_understanding_accepts_paths_pil_and_tensors_of_any_mode(pipes, tmp_path, mode):
    pipe = pipes[mode]
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 128))
    grey16 = Image.fromarray(np.full((40, 30), 40000, dtype=np.uint16))
    tiny = Image.new("L", (1, 1), 200)
    wide = Image.new("RGB", (10000, 10), (0, 0, 255))
    path = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(path)
    tensor = torch.zeros(3, 32, 32)
    captions = pipe.caption([rgba, grey16, tiny, wide, path, str(path), tensor])
    assert len(captions) == 7 and all(isinstance(c, str) for c in captions)
    assert captions[4] == captions[5]  # a Path and its string are the same image
    assert pipe.caption(path) == [captions[4]]
    answers = pipe.answer([path, tensor], ["what color is it?", "how many shapes are there?"])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert pipe.answer(path, "what color is it?") == answers[:1]
    texts = pipe.generate_text(["a red", "there is a"])
    assert len(texts) == 2 and texts == pipe.generate_text(["a red", "there is a"])


@pytest.mark.parametrize("mode", ["mask", "ar"])
def test_inpainting_keeps_the_codes_outside_the_region(pipes, mode):
    pipe = pipes[mode]
    image = pipe.generate_images(["a red circle"], seed=0)[0]
    filled = pipe.inpaint(image, (0, 0, 16, 8), "a blue square", seed=0)
    assert isinstance(filled, Image.Image) and filled.size == (32, 32)
    codes = pipe.vq.encode(pipe._images([image]))[0]
    new = pipe.inpaint_codes(codes, (0, 0, 16, 8), "a blue square", seed=0).view(8, 8)
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[:2, :4] = True  # 4-pixel patches: the box covers code rows 0-1, columns 0-3
    assert torch.equal(new[~region], codes.view(8, 8)[~region])
    assert new.min() >= 0 and new.max() < 64
    mask = np.zeros((32, 32), dtype=bool)
    mask[-4:, :] = True  # outpaint the bottom border
    assert pipe.inpaint(image, mask, "").size == (32, 32)


def test_bad_inputs_get_clear_messages(pipes, tmp_path, caplog):
    pipe = pipes["mask"]
    with pytest.raises(ValueError, match="outside the 32x32 image"):
        pipe.inpaint(Image.new("RGB", (32, 32)), (40, 40, 50, 50), "x")
    with pytest.raises(ValueError, match="is empty"):
        pipe.inpaint(Image.new("RGB", (32, 32)), (10, 10, 5, 20), "x")
    with pytest.raises(ValueError, match="must be 32x32"):
        pipe.inpaint(Image.new("RGB", (32, 32)), np.ones((8, 8), dtype=bool), "x")
    with caplog.at_level(logging.WARNING, logger="omni"):
        pipe.inpaint(Image.new("RGB", (32, 32)), (-5, -5, 8, 8), "x")
    assert "clipped" in caplog.text
    with pytest.raises(ValueError, match="got 2 images but 1 questions"):
        pipe.answer([Image.new("RGB", (32, 32))] * 2, ["what?"])
    with pytest.raises(TypeError, match="prompt must be a string"):
        pipe.generate_images([3])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"image 0 \(.*broken\.png\) cannot be read as an image"):
        pipe.caption(tmp_path / "broken.png")
    with pytest.raises(ValueError, match=r"must be \(3, H, W\)"):
        pipe.caption(torch.zeros(1, 32, 32))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="omni"):
        images = pipe.generate_images(["a red circle " * 200])
    assert len(images) == 1 and "cut to the model's budget" in caplog.text


def test_random_draws_happen_on_the_model_device(pipes, monkeypatch):
    """Every direction seeds its generator on the model's device (a CPU generator crashed on CUDA).

    The pipeline is told its model sits on cuda:0 and torch.Generator records the device it is
    asked for (then hands back a CPU one so that the CPU model can still sample).
    """
    pipe = pipes["ar"]
    real_generator = torch.Generator
    asked = []

    def recording_generator(device=None):
        asked.append(torch.device(device) if device is not None else None)
        return real_generator()

    monkeypatch.setattr(torch, "Generator", recording_generator)
    monkeypatch.setattr(type(pipe), "device", property(lambda self: torch.device("cuda", 0)))
    monkeypatch.setattr(pipe, "_images", lambda images: torch.zeros(len(images), 3, 32, 32))
    monkeypatch.setattr(pipe.vq, "encode", lambda images: torch.zeros(len(images), 64, dtype=torch.long))
    image = Image.new("RGB", (32, 32))
    pipe.generate_images(["a red circle"])
    pipe.caption([image])
    pipe.answer([image], ["what color is it?"])
    pipe.generate_text(["a red"])
    pipe.inpaint_codes(torch.zeros(64, dtype=torch.long), (0, 0, 8, 8), "x")
    assert asked == [torch.device("cuda", 0)] * 5


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["mask", "ar"])
def test_every_direction_samples_on_a_gpu_reproducibly(tiny_releases, mode):
    pipe = omni.load_pretrained(tiny_releases[mode], device="cuda")
    images = pipe.generate_images(["a red circle", ""], seed=1)
    again = pipe.generate_images(["a red circle", ""], seed=1)
    assert len(images) == 2 and all(same(a, b) for a, b in zip(images, again))
    captions = pipe.caption(images, temperature=1.0, seed=2)
    assert captions == pipe.caption(images, temperature=1.0, seed=2)
    assert len(pipe.answer(images, ["what color is it?"] * 2)) == 2
    assert pipe.generate_text(["a red"], temperature=1.0, seed=3) == pipe.generate_text(
        ["a red"], temperature=1.0, seed=3
    )
    codes = pipe.vq.encode(pipe._images([images[0]]))[0]
    new = pipe.inpaint_codes(codes, (0, 0, 16, 8), "a blue square", seed=0).view(8, 8)
    region = torch.zeros(8, 8, dtype=torch.bool, device=new.device)
    region[:2, :4] = True
    assert new.is_cuda and torch.equal(new[~region], codes.view(8, 8)[~region])
    assert pipe.inpaint(images[0], (0, 0, 16, 8), "a blue square", seed=0).size == (32, 32)


def test_each_direction_prompts_with_the_grammars_template(pipes, monkeypatch):
    """What the pipeline gives the samplers is the grammar's prompt of each task, the user's text in it."""
    import omni.pipeline
    from omni.grammar import Grammar

    pipe = pipes["mask"]
    seen = []
    real = omni.pipeline.generate_text
    monkeypatch.setattr(
        omni.pipeline,
        "generate_text",
        lambda model, vocab, prompts, **kw: seen.extend(prompts) or real(model, vocab, prompts, **kw),
    )
    grammar, encode = Grammar(pipe.vocab), pipe.tokenizer.encode
    pipe.generate_text("a red", max_new_tokens=2)
    assert seen[-1].ids == grammar.prompt("lm", answer_start=encode("a red")).ids
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    codes = pipe.vq.encode(pipe._images([image]))[0].tolist()
    pipe.caption(image, max_new_tokens=2)
    assert seen[-1] == grammar.prompt("caption", image=codes)
    pipe.answer(image, "what color?", max_new_tokens=2)
    assert seen[-1] == grammar.prompt("vqa", image=codes, question=encode("what color?"))


@pytest.mark.parametrize("mode", ["mask", "ar", "encoder"])
def test_generate_continues_text_and_images_in_the_models_order(pipes, mode):
    pipe = pipes[mode]
    hook = eager_to_draw(pipe.model, pipe.vocab, boi=3.5, eos=1.0)
    try:
        prompt = ["draw", Image.new("RGB", (32, 32), (255, 0, 0)), "and then"]
        runs = [
            pipe.generate([prompt, "a red circle"], text_temperature=1.0, steps=2, seed=s) for s in (0, 0, 1)
        ]
    finally:
        hook.remove()
    assert runs[0] == runs[1] and runs[0] != runs[2]  # PIL images compare by pixels
    parts = [p for row in runs[0] + runs[2] for p in row]
    assert all(isinstance(p, str) or (isinstance(p, Image.Image) and p.size == (32, 32)) for p in parts)
    assert any(isinstance(p, Image.Image) for p in parts) and any(isinstance(p, str) for p in parts)
    with pytest.raises(ValueError, match="fills the model's"):
        pipe.generate("word " * 400)
    with pytest.raises(ValueError, match="one prompt of several parts is one list"):
        pipe.generate(["a red", Image.new("RGB", (32, 32))])


def test_a_long_prompt_in_the_batch_leaves_the_others_room_to_draw(pipes):
    pipe = pipes["ar"]
    limit = pipe.model.config.max_seq_len
    words = " red" * (limit - 20)
    long = pipe.tokenizer.decode(pipe.tokenizer.encode(words)[: limit - 20])
    hook = eager_to_draw(pipe.model, pipe.vocab, boi=50.0, eos=0.0)  # always draws when it may
    try:
        short_row, long_row = pipe.generate(["draw", long], steps=1)
    finally:
        hook.remove()
    assert any(isinstance(p, Image.Image) for p in short_row)  # the long prompt left no room for its own
    assert not any(isinstance(p, Image.Image) for p in long_row)


def test_grounded_directions_give_boxes_in_the_frame_and_layouts_that_draw(tiny_releases):
    """A grounded release: ground -> boxes inside the image, describe_regions -> text, plan ->
    layouts, generate_images(layout=...) draws the plan or a given layout, answers through boxes;
    the same calls on a model without location tokens fail with one clear message."""
    from omni.grounding import Grounded
    from omni.vocab import VocabError

    pipe = omni.load_pretrained(tiny_releases["grounded"])
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    (box,) = pipe.ground([image], ["red circle"])
    assert pipe.frame == (32, 32) and 0 <= box[0] <= box[2] <= 32 and 0 <= box[1] <= box[3] <= 32
    assert all(
        isinstance(t, str) for t in pipe.describe_regions([image, image], [(0, 0, 8, 8), (8, 8, 30, 30)])
    )
    (layout,) = pipe.plan(["a red circle"])
    assert isinstance(layout, Grounded)
    drawn = pipe.generate_images(["a red circle"], layout="plan", seed=3)
    given = pipe.generate_images(["a red circle"] * 2, layout=[[("red circle", (2, 2, 12, 12))]] * 2, seed=3)
    assert drawn[0].size == given[0].size == (32, 32)
    (answer,) = pipe.answer([image], ["is there a red circle?"], grounded=True, max_new_tokens=6)
    assert isinstance(answer, Grounded) and isinstance(answer.text, str)
    with pytest.raises(ValueError, match="one layout per prompt"):
        pipe.generate_images(["a", "b"], layout=[[("red circle", (2, 2, 12, 12))]])
    plain = omni.load_pretrained(tiny_releases["ar"])
    with pytest.raises(VocabError, match="not trained with grounding"):
        plain.plan(["a red circle"])
