"""The unified vocabulary: layout, round trips, and refusing mismatched tokenizers."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from omni.tokenizers.text import TextTokenizer, train_bpe
from omni.vocab import SPECIALS, Vocab, VocabError

CORPUS = ["a red circle left of a blue square", "what color is the circle? red"] * 20


@pytest.fixture(scope="module")
def ours():
    return TextTokenizer(train_bpe(CORPUS, vocab_size=300))


def foreign_tokenizer() -> TextTokenizer:
    """A BPE without our special tokens (as a pretrained tokenizer.json would be)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=280, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return TextTokenizer(tok)


def test_layout_uses_the_tokenizers_specials_then_codes(ours):
    vocab = Vocab.build(ours, codebook_size=64)
    assert vocab.text_size == ours.vocab_size and vocab.image_offset == ours.vocab_size
    assert vocab.size == ours.vocab_size + 64
    for name, token in SPECIALS.items():
        assert vocab.special(name) == ours.token_id(token)
    codes = torch.tensor([0, 5, 63])
    ids = vocab.image_ids(codes)
    assert vocab.is_image(ids).all() and not vocab.is_text(ids).any()
    assert torch.equal(vocab.codes(ids), codes)
    text = torch.tensor(ours.encode("a red circle"))
    assert vocab.is_text(text).all() and not vocab.is_image(text).any()
    assert not vocab.is_text(torch.tensor([vocab.special("boi")])).any()
    allowed = vocab.text_id_mask()
    assert allowed[text].all() and allowed[vocab.special("eos")] and not allowed[vocab.special("boi")]
    assert not allowed[vocab.image_offset :].any() and vocab.image_id_mask()[vocab.image_offset :].all()


def test_specials_missing_from_the_tokenizer_are_appended():
    tok = foreign_tokenizer()
    vocab = Vocab.build(tok, codebook_size=16)
    assert sorted(vocab.special_ids.values()) == list(range(tok.vocab_size, tok.vocab_size + len(SPECIALS)))
    assert vocab.image_offset == tok.vocab_size + len(SPECIALS) and vocab.size == vocab.image_offset + 16
    vocab.check(tok, 16)


def test_layout_round_trips_through_json(ours):
    vocab = Vocab.build(ours, codebook_size=64)
    assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    with pytest.raises(VocabError, match="unknown vocabulary keys"):
        Vocab.from_dict({**vocab.to_dict(), "extra": 1})
    with pytest.raises(VocabError, match="lacks special tokens"):
        Vocab.from_dict({**vocab.to_dict(), "special_ids": {"pad": 0}})
    with pytest.raises(VocabError, match="overlaps"):
        Vocab.from_dict({**vocab.to_dict(), "image_offset": 3})


def test_mismatched_tokenizers_are_refused_naming_both(ours):
    vocab = Vocab.build(ours, codebook_size=64)
    with pytest.raises(VocabError, match=r"runs/vq has 1024 codes .* laid out for 64"):
        vocab.check(ours, 1024, vq_name="runs/vq")
    with pytest.raises(VocabError, match=r"other.json has \d+ tokens .* laid out for 300"):
        vocab.check(foreign_tokenizer(), 64, text_name="other.json")


def test_conversation_tokens_come_only_with_conversations_and_rows_map_by_token(ours):
    plain = Vocab.build(ours, codebook_size=16)
    chat = Vocab.build(ours, codebook_size=16, conversations=True)
    assert not plain.conversations and chat.conversations and chat.size == plain.size + 1
    assert chat.special("chat") == ours.vocab_size and chat.image_offset == plain.image_offset + 1
    with pytest.raises(VocabError, match="not trained on conversations"):
        plain.special("chat")
    assert not chat.text_id_mask()[chat.special("chat")]  # never generated as text
    rows = chat.rows_from(plain)
    assert rows[: ours.vocab_size] == list(range(ours.vocab_size))
    assert rows[chat.special("chat")] is None
    assert rows[chat.image_offset :] == list(range(plain.image_offset, plain.size))
    assert plain.rows_from(chat)[plain.image_offset] == chat.image_offset  # and back
    assert Vocab.from_dict(json.loads(json.dumps(plain.to_dict()))) == plain  # older layouts still load
    with pytest.raises(VocabError, match="do not share"):
        chat.rows_from(Vocab.build(ours, codebook_size=32))
