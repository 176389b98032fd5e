"""Grounding: boxes <-> location tokens, grounded text, grounded documents and their targets."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from omni.data.images import to_tensor
from omni.grammar import IGNORE, Grammar
from omni.grounding import (
    bins_box,
    box_bins,
    box_ids,
    grounded_caption_parts,
    grounded_ids,
    ids_box,
    ids_point,
    iou,
    layout_parts,
    parse_grounded,
    point_ids,
    resized_box,
)
from omni.vocab import Vocab, VocabError


class Words:
    """A stand-in text tokenizer: one id per character (enough to check what goes where)."""

    vocab_size = 300

    def special_ids(self):
        return {}

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.fixture(scope="module")
def vocab():
    return Vocab.build(Words(), codebook_size=64, locations=16)


def test_location_tokens_join_only_the_vocabularies_that_ask_for_them(vocab):
    plain = Vocab.build(Words(), codebook_size=64)
    assert plain.location_bins == 0
    assert {k: plain.special_ids[k] for k in plain.special_ids} == {
        k: vocab.special_ids[k] for k in plain.special_ids
    }  # older ids stay where they were
    assert vocab.location_bins == 16 and vocab.size == plain.size + 16 + 4
    ids = [vocab.location_id(i) for i in range(16)]
    assert all(vocab.is_location_id(i) and vocab.location_index(i) == n for n, i in enumerate(ids))
    assert (
        vocab.location_id_mask().sum() == 16 and not (vocab.location_id_mask() & vocab.text_id_mask()).any()
    )
    assert Vocab.from_dict(vocab.to_dict()).location_bins == 16
    with pytest.raises(VocabError, match="not trained with grounding"):
        plain.special("plan")
    with pytest.raises(VocabError, match="location bins"):
        Vocab.build(Words(), codebook_size=64, locations=1)


@pytest.mark.parametrize("size", [(32, 32), (640, 480)])
def test_boxes_round_trip_through_location_tokens(vocab, size):
    rng = random.Random(0)
    w, h = size
    for _ in range(200):
        x0, x1 = sorted(rng.uniform(0, w) for _ in range(2))
        y0, y1 = sorted(rng.uniform(0, h) for _ in range(2))
        back = ids_box(vocab, box_ids(vocab, (x0, y0, x1, y1), size), size)
        # within half a bin of where it was, per coordinate
        assert all(
            abs(a - b) <= side / 16 / 2 + 1e-9 for a, b, side in zip(back, (x0, y0, x1, y1), (w, h, w, h))
        )
        # a box at bin centres comes back exactly
        assert ids_box(vocab, box_ids(vocab, back, size), size) == back
    assert box_bins((-5, -5, w + 5, h + 5), size, 16) == [0, 0, 15, 15]  # outside: clamped
    assert bins_box([0, 0, 15, 15], (32, 32), 16) == (1.0, 1.0, 31.0, 31.0)
    with pytest.raises(ValueError, match="x1 >= x0"):
        box_ids(vocab, (10, 0, 5, 4), size)
    point = (rng.uniform(0, w), rng.uniform(0, h))
    ids = point_ids(vocab, point, size)
    assert len(ids) == 2 and all(vocab.is_location_id(i) for i in ids)
    assert all(abs(a - b) <= side / 32 + 1e-9 for a, b, side in zip(ids_point(vocab, ids, size), point, size))


def test_a_box_moves_with_its_image_when_resized_and_cropped():
    """resized_box follows to_tensor (shorter side to the resolution, centre crop) pixel for pixel."""
    image = Image.new("RGB", (96, 64))
    ImageDraw.Draw(image).rectangle((30, 10, 59, 39), fill=(255, 255, 255))  # pixels 30..59: box [30, 60)
    seen = to_tensor(image, 32)[0].numpy() > 0
    ys, xs = np.nonzero(seen)
    moved = resized_box((30, 10, 60, 40), (96, 64), 32)
    assert moved is not None
    assert abs(moved[0] - xs.min()) <= 1 and abs(moved[2] - (xs.max() + 1)) <= 1
    assert abs(moved[1] - ys.min()) <= 1 and abs(moved[3] - (ys.max() + 1)) <= 1
    assert resized_box((0, 0, 14, 64), (96, 64), 32) is None  # cropped away
    assert resized_box((4, 5, 12, 20), (32, 32), 32) == (4, 5, 12, 20)  # same frame: unchanged


def test_iou_of_equal_disjoint_and_half_boxes():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (0, 0, 10, 5)) == 0.5


def test_grounded_text_puts_each_box_after_its_name_and_reads_back(vocab):
    caption = "there is a red circle to the left of a blue square"
    objects = [("blue square", (20.0, 9.0, 29.0, 17.0)), ("red circle", (5.0, 11.0, 13.0, 19.0))]
    parts = grounded_caption_parts(caption, objects)
    assert parts[0] == "there is a red circle" and parts[2] == " to the left of a blue square"
    assert grounded_caption_parts("a green triangle", objects) is None  # names not in the caption
    ids = grounded_ids(vocab, Words().encode, parts, (32, 32))
    assert sum(vocab.is_location_id(i) for i in ids) == 8
    back = parse_grounded(vocab, Words().decode, ids, (32, 32))
    assert back.text == caption
    assert [p for p, _ in back.boxes] == ["there is a red circle", "to the left of a blue square"]
    assert all(iou(b, t) > 0.8 for (_, b), (_, t) in zip(back.boxes, objects[::-1]))
    # a run of fewer than four location tokens is the model's slip: dropped, text kept
    slip = Words().encode("a cat") + ids[-4:-1] + Words().encode(" sat")
    assert parse_grounded(vocab, Words().decode, slip, (32, 32)).boxes == []
    layout = layout_parts(objects)
    assert layout[0] == " blue square" and layout[2] == " red circle"  # each name as in a caption: " red"


def test_grounded_documents_put_their_targets_on_the_location_tokens(vocab):
    g, codes, frame = Grammar(vocab), list(range(16)), (32, 32)
    box = box_ids(vocab, (4, 4, 12, 12), frame)
    ground = g.document("ground", image=codes, phrase=Words().encode("red circle"), box=box)
    assert [t for t in ground.targets if t != IGNORE] == box + [vocab.special("eos")]
    region = g.document("region", image=codes, phrase=Words().encode("red circle"), box=box)
    assert [t for t in region.targets if t != IGNORE] == Words().encode("red circle") + [vocab.special("eos")]
    layout = grounded_ids(vocab, Words().encode, layout_parts([("red circle", (4, 4, 12, 12))]), frame)
    plan = g.document(
        "plan", causal_image=True, caption=Words().encode("a red circle"), layout=layout, image=codes
    )
    learnt = [t for t in plan.targets if t != IGNORE]
    image_ids = [vocab.image_offset + c for c in codes]
    assert learnt == layout + [vocab.special("eos"), vocab.special("boi")] + image_ids
    start, end = plan.image
    assert plan.tokens[start:end] == image_ids and plan.causal_image
    # mask mode: the layout keeps its loss, the image is learnt only where masked
    masked = plan.masked([start, start + 3], vocab.special("mask"))
    assert [t for t in masked.targets[: start - 1] if t != IGNORE] == layout + [
        vocab.special("eos"),
        vocab.special("boi"),
    ]
    assert [i for i, t in enumerate(masked.targets) if t != IGNORE and i >= start - 1] == [start, start + 3]
    # a question first (text_first): the image comes after it, the answer after the image
    first = Grammar(vocab, text_first=True).document("ground", image=codes, phrase=[72], box=box)
    s, e = first.image
    assert first.tokens[: s - 1] == [vocab.special("ground"), vocab.special("bos"), 72, vocab.special("sep")]
    assert [t for t in first.targets if t != IGNORE] == box + [vocab.special("eos")]


def test_a_grounded_answer_finds_the_named_objects_before_it_answers(vocab):
    g, codes, frame = Grammar(vocab), list(range(16)), (32, 32)
    chain = grounded_ids(vocab, Words().encode, layout_parts([("red circle", (4, 4, 12, 12))]), frame)
    doc = g.document(
        "gvqa", image=codes, question=Words().encode("where is the red circle?"), objects=chain, answer=[108]
    )
    prompt = g.prompt("gvqa", image=codes, question=Words().encode("where is the red circle?"))
    assert doc.tokens[: len(prompt.ids)] == prompt.ids and prompt.ids[-1] == vocab.special("ground")
    assert [t for t in doc.targets if t != IGNORE] == chain + [
        vocab.special("sep"),
        108,
        vocab.special("eos"),
    ]


def test_more_questions_about_one_image_each_learn_their_own_answer(vocab):
    """Follow-up questions (data.questions_per_image): one image, several question-answer turns,
    the loss on every answer and nowhere else; the first turn is what a sampler's prompt holds."""
    g, codes = Grammar(vocab), list(range(16))
    first = {"question": [81, 82], "answer": [91]}
    more = [{"question": [83], "answer": [92, 93]}, {"question": [84], "answer": [94]}]
    doc = g.document("vqa", image=codes, follow_ups=more, **first)
    bos, sep, eos = (vocab.special(n) for n in ("bos", "sep", "eos"))
    prompt = g.prompt("vqa", image=codes, **{"question": first["question"]})
    assert doc.tokens[: len(prompt.ids)] == prompt.ids
    assert doc.tokens[len(prompt.ids) :] == [91, eos, bos, 83, sep, 92, 93, eos, bos, 84, sep, 94, eos]
    assert [t for t in doc.targets if t != IGNORE] == [91, eos, 92, 93, eos, 94, eos]
    assert len(doc.images) == 1
    with pytest.raises(ValueError, match="takes no follow-up"):
        g.document("caption", image=codes, caption=[81], follow_ups=more)
