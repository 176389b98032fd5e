"""Conversations in shards: the JSON layout (LLaVA's), and its turns for the grammar's `chat`.

A dialogue sample is `KEY.json` plus its images `KEY.0.png`, `KEY.1.png`, ... (any image
extension), in the order the conversation shows them:

    {"conversations": [
        {"from": "human", "value": "draw a red circle on the left"},
        {"from": "gpt",   "value": "<image>"},
        {"from": "human", "value": "<image>\\nwhat color is the square?"},
        {"from": "gpt",   "value": "blue"}]}

This is LLaVA's conversation JSON (`from`: human / gpt, also user / assistant; `value`: text
with `<image>` placeholders), read as it is, with one extension: a placeholder may stand in the
assistant's turn too, an image the model learns to draw. The i-th placeholder of the
conversation is image i. A sample with one image may name it `KEY.png` (LLaVA's single `image`).
Code shards keep the JSON and hold all the images' codes in `KEY.codes.npy`, shape (N, h, w).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from omni.data.loader import IMAGE_EXTENSIONS

PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_NUMBERED = re.compile(r"^(\d+)\.(\w+)$")


def image_entries(sample: dict) -> list[str]:
    """The sample's image entries in order: `0.png`, `1.jpg`, ... when it has numbered images,
    else its one image (`png`, `jpg`, ...), else none."""
    numbered = sorted(
        (int(m.group(1)), ext)
        for ext in sample
        if (m := _NUMBERED.match(ext)) and m.group(2) in IMAGE_EXTENSIONS
    )
    if numbered:
        return [ext for _, ext in numbered]
    single = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    return [single] if single else []


def is_dialogue(meta) -> bool:
    return isinstance(meta, dict) and "conversations" in meta


def parse_conversation(meta: dict, images: int) -> list[tuple[str, list[tuple[str, object]]]]:
    """`meta["conversations"]` -> turns (role, parts): ("text", str) and ("image", its index).
    ValueError saying what is wrong (unknown role, placeholders and images that do not match,
    no assistant turn, empty turns)."""
    conversation = meta.get("conversations")
    if not isinstance(conversation, list) or not conversation:
        raise ValueError('"conversations" must be a non-empty list of {"from": ..., "value": ...}')
    turns, seen = [], 0
    for n, turn in enumerate(conversation):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f'turn {n} is not {{"from": ..., "value": "..."}}')
        role = ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise ValueError(f"turn {n}: 'from' is {turn.get('from')!r}; use one of {sorted(ROLES)}")
        parts: list[tuple[str, object]] = []
        for i, text in enumerate(turn["value"].split(PLACEHOLDER)):
            if i:
                parts.append(("image", seen))
                seen += 1
            if text.strip():
                parts.append(("text", text.strip()))
        if not parts:
            raise ValueError(f"turn {n} is empty")
        turns.append((role, parts))
    if seen != images:
        raise ValueError(
            f"the conversation shows {seen} {PLACEHOLDER} placeholders but the sample has {images} images"
        )
    if not any(role == "assistant" for role, _ in turns):
        raise ValueError("the conversation has no assistant turn to learn from")
    return turns


def tokenized(
    turns, encode: Callable[[str], list[int]], codes
) -> list[tuple[str, list[tuple[str, list[int]]]]]:
    """Turns of `parse_conversation` with text encoded and image i replaced by `codes[i]` (flat):
    what `omni.grammar.Grammar.chat_document` takes."""
    return [
        (
            role,
            [
                ("text", encode(c)) if kind == "text" else ("image", [int(x) for x in codes[c]])
                for kind, c in parts
            ],
        )
        for role, parts in turns
    ]
