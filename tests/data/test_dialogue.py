"""Conversations in shards (omni.data.dialogue): LLaVA's JSON read as turns, dialogue samples
encoded with all their images, and packed as chat documents only."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import webdataset as wds

from omni.assets import Assets
from omni.data.codes import npy_to_codes
from omni.data.dialogue import image_entries, parse_conversation, tokenized
from omni.data.loader import SkipCounter
from omni.data.packing import TaskBuilder, decode_code_sample, pack_stage
from omni.grammar import IGNORE, TASKS

LLAVA = {
    "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"},
        {"from": "gpt", "value": "a red circle"},
        {"from": "user", "value": "draw it bigger"},
        {"from": "assistant", "value": "here: <image>"},
    ]
}


def test_llava_conversations_read_as_turns_and_bad_ones_say_why():
    turns = parse_conversation(LLAVA, images=2)
    assert turns == [
        ("user", [("image", 0), ("text", "What is this?")]),
        ("assistant", [("text", "a red circle")]),
        ("user", [("text", "draw it bigger")]),
        ("assistant", [("text", "here:"), ("image", 1)]),
    ]
    encoded = tokenized(turns, lambda t: [len(t)], np.array([[1, 2], [3, 4]]))
    assert encoded[0] == ("user", [("image", [1, 2]), ("text", [13])])
    bad = {
        "shows 2 <image> placeholders but the sample has 1": (LLAVA, 1),
        "'from' is 'system'": ({"conversations": [{"from": "system", "value": "x"}]}, 0),
        "no assistant turn": ({"conversations": [{"from": "human", "value": "hi"}]}, 0),
        "turn 0 is empty": ({"conversations": [{"from": "gpt", "value": " "}]}, 0),
        "non-empty list": ({"conversations": []}, 0),
    }
    for message, (meta, images) in bad.items():
        with pytest.raises(ValueError, match=message):
            parse_conversation(meta, images)


def test_image_entries_are_numbered_in_order_else_the_single_image():
    assert image_entries({"10.png": b"", "2.jpg": b"", "0.png": b"", "json": b""}) == [
        "0.png",
        "2.jpg",
        "10.png",
    ]
    assert image_entries({"png": b"", "txt": b""}) == ["png"] and image_entries({"txt": b""}) == []


def test_dialogue_code_shards_keep_every_image_and_pack_as_chat_only(dialogue_assets, model_assets):
    shard = str(dialogue_assets.codes / "train-000000.tar")
    raw = list(wds.WebDataset(shard, shardshuffle=False))
    sources = {
        s["__key__"]: s
        for s in wds.WebDataset(str(dialogue_assets.images / "train-000000.tar"), shardshuffle=False)
    }
    for sample in raw:
        meta = json.loads(sample["json"])
        codes = npy_to_codes(sample["codes.npy"])
        assert codes.shape == (len(meta["scenes"]), 8, 8)  # one grid per image, in order
        assert image_entries(sample) == image_entries(sources[sample["__key__"]])  # images kept
    assets = Assets.load(model_assets.tokenizer, model_assets.vq, conversations=True)
    builder = TaskBuilder(assets.vocab, assets.tokenizer, "ar")
    skips = SkipCounter()
    decoded = [decode_code_sample(s, skips) for s in raw]
    assert all(d is not None and "turns" in d for d in decoded)
    rng = random.Random(0)
    doc = builder.build(decoded[0], "chat", rng)
    assert doc.task == "chat" and len(doc.images) == len(json.loads(raw[0]["json"])["scenes"])
    assert builder.build(decoded[0], "t2i", rng) is None  # a conversation serves only chat
    # Packed among plain code shards: conversations become chat documents, the rest never do.
    plain = [
        decode_code_sample(s, skips)
        for s in wds.WebDataset(str(model_assets.codes / "train-000000.tar"), shardshuffle=False)
    ]
    batches = list(
        pack_stage(
            iter(decoded + plain[:20]), skips, "0", builder=builder,
            ratios={"t2i": 1.0, "caption": 1.0, "chat": 1.0}, seq_len=256, batch_size=4,
        )
    )  # fmt: skip
    tasks = {TASKS[t] for b in batches for t in b["task"][b["targets"] != IGNORE].unique().tolist()}
    assert tasks == {"chat", "t2i", "caption"}
    bad = dict(
        raw[0], json=json.dumps({"conversations": [{"from": "gpt", "value": "<image> <image>"}]}).encode()
    )
    assert decode_code_sample(bad, skips) is None and "bad conversation" in str(skips.drain())
