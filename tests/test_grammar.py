"""omni.grammar: each template serves training and sampling alike, its overhead, and the one layout."""

from __future__ import annotations

import pytest
import torch

from omni.generate import layout
from omni.grammar import IGNORE, TEMPLATES, Grammar, Placed, lay_out
from omni.vocab import CONVERSATION_SPECIALS, GROUNDING_SPECIALS, SPECIALS, Vocab, location_specials

CODES = list(range(16))
TEXT = {"caption": [40, 41, 42], "question": [50, 51], "answer": [60], "text": [70, 71, 72, 73]}
TEXT |= {
    "phrase": [80, 81],
    "box": [130, 131, 132, 133],
    "layout": [80, 130, 131, 132, 133],
    "objects": [81, 130],
}


@pytest.fixture(scope="module")
def grammar() -> Grammar:
    names = [*SPECIALS, *GROUNDING_SPECIALS, *location_specials(8)]  # every template's tokens
    return Grammar(Vocab(100, 64, 100 + len(names), {n: 100 + i for i, n in enumerate(names)}))


def slots(task: str) -> dict:
    names = {p[1:] for parts in TEMPLATES[task] for p in parts if p.startswith("$")}
    return {n: CODES if n == "image" else TEXT[n] for n in names}


@pytest.mark.parametrize("task", list(TEMPLATES))
def test_the_prompt_a_sampler_gets_is_how_the_training_document_begins(grammar, task):
    doc = grammar.document(task, **slots(task))
    prompt = grammar.prompt(task, **slots(task))
    assert doc.tokens[: len(prompt.ids)] == prompt.ids
    if prompt.images:
        assert prompt.images == doc.images  # a read image sits where training put it
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


@pytest.fixture(scope="module")
def chat_grammar() -> Grammar:
    names = [*SPECIALS, *CONVERSATION_SPECIALS]
    return Grammar(Vocab(100, 64, 100 + len(names), {n: 100 + i for i, n in enumerate(names)}))


def conversation():
    """draw -> image; question with the user's image -> answer; edit -> image."""
    return [
        ("user", [("text", [40, 41])]),
        ("assistant", [("image", CODES)]),
        ("user", [("image", CODES[::-1]), ("text", [50])]),
        ("assistant", [("text", [60])]),
        ("user", [("text", [42])]),
        ("assistant", [("text", [61]), ("image", CODES)]),
    ]


def test_a_conversation_learns_only_the_assistants_turns(chat_grammar):
    g, s = chat_grammar, chat_grammar.vocab.special
    image = [g.vocab.image_offset + c for c in CODES]
    read = [g.vocab.image_offset + c for c in CODES[::-1]]
    doc = g.chat_document(conversation(), image_generation="ar")
    assert doc.task == "chat" and doc.tokens == [
        s("chat"), s("bos"), 40, 41, s("sep"), s("boi"), *image, s("eoi"), s("eos"),
        s("bos"), s("boi"), *read, s("eoi"), 50, s("sep"), 60, s("eos"),
        s("bos"), 42, s("sep"), 61, s("boi"), *image, s("eoi"), s("eos"),
    ]  # fmt: skip
    learnt = [doc.tokens[i + 1] for i, t in enumerate(doc.targets) if t != IGNORE]
    assert learnt == [t for i, t in enumerate(doc.targets) if t != IGNORE]  # next-token targets
    assert learnt == [s("boi"), *image, s("eos"), 60, s("eos"), 61, s("boi"), *image, s("eos")]  # no <eoi>
    first, second, third = doc.images
    assert not first[2] and second[2] and not third[2]  # generated: causal (ar); the user's: read
    assert doc.tokens[second[0] - 1] == s("boi") and second[1] - second[0] == len(CODES)


def test_mask_mode_masks_the_assistants_images_and_prompts_lay_out_as_training(chat_grammar):
    import random

    g, s = chat_grammar, chat_grammar.vocab.special
    doc = g.chat_document(
        conversation(), image_generation="mask", rng=random.Random(0), mask_count=lambda n: 5
    )
    mask = s("mask")
    for start, end, bidirectional in doc.images:
        assert bidirectional
        masked = [p for p in range(start, end) if doc.tokens[p] == mask]
        inside = [p for p in range(start - 1, end) if doc.targets[p] != IGNORE]
        generated = len(masked) > 0
        assert len(masked) in (0, 5) and inside == masked  # a masked code is its own target, nothing else
        assert all(doc.targets[p] == g.vocab.image_offset + CODES[p - start] for p in masked) or not generated
    assert doc.targets[doc.images[0][0] - 2] == s("boi")  # deciding to draw is learnt
    # The prompt for the last assistant turn is the document up to it, its images where training put them.
    turns = conversation()[:-1]
    prompt = g.chat_prompt(turns, "ar")
    full = g.chat_document(conversation(), image_generation="ar")
    assert full.tokens[: len(prompt.ids)] == prompt.ids and prompt.images == full.images[:2]
    with pytest.raises(ValueError, match="ends with the user's turn"):
        g.chat_prompt(conversation(), "ar")
    with pytest.raises(ValueError, match="role 'system'"):
        g.chat_document([("system", [("text", [1])])])
