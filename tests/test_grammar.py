"""omni.grammar: each template serves training and sampling alike, its overhead, and the one layout."""

from __future__ import annotations

import pytest
import torch

from omni.generate import layout
from omni.grammar import IGNORE, TASKS, TEMPLATES, Grammar, Placed, lay_out
from omni.vocab import SPECIALS, Vocab

CODES = list(range(16))
TEXT = {"caption": [40, 41, 42], "question": [50, 51], "answer": [60], "text": [70, 71, 72, 73]}


@pytest.fixture(scope="module")
def grammar() -> Grammar:
    return Grammar(Vocab(100, 64, 100 + len(SPECIALS), {n: 100 + i for i, n in enumerate(SPECIALS)}))


def slots(task: str) -> dict:
    names = {p[1:] for parts in TEMPLATES[task] for p in parts if p.startswith("$")}
    return {n: CODES if n == "image" else TEXT[n] for n in names}


@pytest.mark.parametrize("task", TASKS)
def test_the_prompt_a_sampler_gets_is_how_the_training_document_begins(grammar, task):
    doc = grammar.document(task, **slots(task))
    prompt = grammar.prompt(task, **slots(task))
    assert doc.tokens[: len(prompt.ids)] == prompt.ids
    if prompt.images:
        assert prompt.images == [doc.image]  # a read image sits where training put it
    # The loss starts exactly where the prompt ends: the last prompt token predicts the first answer token.
    first_target = next(i for i, t in enumerate(doc.targets) if t != IGNORE)
    assert first_target == len(prompt.ids) - 1 and doc.targets[first_target] == doc.tokens[len(prompt.ids)]
    # The template's overhead is every token that is not slot content.
    content = sum(len(v) for v in slots(task).values())
    assert len(doc) == content + Grammar.overhead(task)


def test_the_templates_spell_the_documented_sequences(grammar):
    s = grammar.vocab.special
    image = [grammar.vocab.image_offset + c for c in CODES]
    t2i = grammar.document("t2i", caption=TEXT["caption"], image=CODES)
    assert t2i.tokens == [s("t2i"), s("bos"), *TEXT["caption"], s("eos"), s("boi"), *image, s("eoi")]
    assert t2i.causal_image and t2i.targets[-1] == IGNORE  # <eoi> closes the image without a loss
    caption = grammar.document("caption", image=CODES, caption=TEXT["caption"])
    assert caption.tokens == [s("mmu"), s("boi"), *image, s("eoi"), s("bos"), *TEXT["caption"], s("eos")]
    assert not caption.causal_image and [t for t in caption.targets if t != IGNORE] == [
        *TEXT["caption"],
        s("eos"),
    ]
    vqa = grammar.prompt("vqa", image=CODES, question=TEXT["question"])
    assert vqa.ids == [s("vqa"), s("boi"), *image, s("eoi"), s("bos"), *TEXT["question"], s("sep")]
    assert grammar.prompt("lm", answer_start=[70, 71]).ids == [s("lm"), s("bos"), 70, 71]
    masked = t2i.masked([t2i.image[0] + 1], s("mask"))
    assert masked.tokens[t2i.image[0] + 1] == s("mask") and masked.targets[t2i.image[0] + 1] == image[1]
    assert sum(t != IGNORE for t in masked.targets) == 1
    with pytest.raises(ValueError, match="unknown task 'poem'"):
        grammar.prompt("poem")


def test_text_room_leaves_space_for_template_image_and_answer(grammar):
    assert Grammar.overhead("t2i") == 5 and Grammar.overhead("vqa") == 6 and Grammar.overhead("lm") == 3
    assert grammar.text_room("t2i", 256, 64) == 256 - 5 - 64  # the image is the answer: no text reserved
    assert grammar.text_room("vqa", 256, 64) == 256 - 6 - 64 - 1  # at least one answer token
    assert grammar.text_room("lm", 256, 64) == 256 - 3 - 1  # no image in the lm template
    captions = [[1, 2], [3]]
    guided = grammar.guided_t2i_prompts(captions, guidance=2.0)
    assert [p.ids for p in guided[2:]] == [grammar.prompt("t2i", caption=[]).ids] * 2
    assert len(grammar.guided_t2i_prompts(captions, guidance=0.0)) == 2


def test_packing_and_sampling_lay_out_a_document_alike(grammar):
    """The one layout: a caption document packed for training and its prompt laid out for
    sampling (left-padded, with room for the answer) give each real position the same rotary
    position, image index and visibility."""
    doc = grammar.document("caption", image=CODES, caption=TEXT["caption"])
    prompt = grammar.prompt("caption", image=CODES)
    new = len(doc) - len(prompt.ids)
    sampled = layout([prompt, grammar.prompt("lm")], new, pad_id=0)  # row 0 is the longer one: no padding
    packed = lay_out([[Placed(0, len(doc), [(doc.image[0], doc.image[1], True)])]], len(doc))
    assert torch.equal(sampled.positions[:1], packed.positions)
    assert torch.equal(sampled.image_index[:1], packed.image_index)
    assert torch.equal(sampled.vis.dense_mask()[:1], packed.vis.dense_mask())
    # Row 1 is left-padded: padding sees only itself, and positions start at 0 at its first real token.
    pad = sampled.pad[1]
    assert pad > 0 and sampled.positions[1, pad] == 0
    mask = sampled.vis.dense_mask()[1, 0]
    assert not mask[pad:, :pad].any() and mask[:pad, :pad].equal(torch.eye(pad, dtype=torch.bool))
