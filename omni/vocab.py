"""The unified vocabulary: text BPE ids, special tokens, then VQ image codes, in one id space.

    vocab = Vocab.build(text_tokenizer, codebook_size=1024)
    vocab.special("boi")           # id of <|boi|>
    vocab.image_ids(codes)         # VQ codes -> model ids
    vocab.codes(ids)               # model ids -> VQ codes
    vocab.to_dict() / Vocab.from_dict(d)   # the layout as written into a model's config.json

Layout: ids `[0, text_size)` are the text tokenizer's own (our BPE reserves the special tokens
at its first ids, so they are used where they are); special tokens the tokenizer lacks are
appended after it; the `codebook_size` image codes follow from `image_offset`. Every other
module asks this object for ids: nothing else hard-codes one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property

import torch

# Short names of the special tokens and their strings (the strings match omni.tokenizers.text).
SPECIALS: dict[str, str] = {
    "pad": "<|pad|>",
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "boi": "<|boi|>",  # begin of image
    "eoi": "<|eoi|>",  # end of image
    "mask": "<|mask|>",  # a masked image token (mask-mode generation)
    "t2i": "<|t2i|>",  # task: text to image
    "mmu": "<|mmu|>",  # task: image understanding (captioning)
    "vqa": "<|vqa|>",  # task: question answering about an image
    "lm": "<|lm|>",  # task: text only
    "sep": "<|sep|>",  # between a question and its answer
}
# Added to a vocabulary only when its run trains conversations (`Vocab.build(conversations=True)`):
# vocabularies laid out before them, and runs without them, keep their ids.
CONVERSATION_SPECIALS: dict[str, str] = {"chat": "<|chat|>"}  # task: a conversation (omni.grammar)
# Added only when a run trains grounding (`Vocab.build(locations=B)`): the grounded tasks' tokens
# (omni.grammar), then B location tokens `<|loc_0|>` ... per axis (omni.grounding).
GROUNDING_SPECIALS: dict[str, str] = {
    "gcap": "<|gcap|>",  # task: a grounded caption (each object's name followed by its box)
    "ground": "<|ground|>",  # task: a phrase -> its box (referring expression)
    "region": "<|region|>",  # task: a box -> what is there
    "plan": "<|plan|>",  # task: layout-first text to image (the caption, its layout, the image)
}


def location_specials(bins: int) -> dict[str, str]:
    """The short names and strings of `bins` location tokens."""
    return {f"loc_{i}": f"<|loc_{i}|>" for i in range(bins)}


class VocabError(ValueError):
    """A vocabulary that does not fit the tokenizers or the model it is combined with."""


@dataclass(frozen=True)
class Vocab:
    """Where every kind of id lives in the unified id space."""

    text_size: int  # ids [0, text_size) belong to the text tokenizer
    codebook_size: int  # image codes occupy [image_offset, image_offset + codebook_size)
    image_offset: int
    special_ids: dict[str, int] = field(default_factory=dict)  # short name -> id

    def __post_init__(self):
        missing = sorted(set(SPECIALS) - set(self.special_ids))
        if missing:
            raise VocabError(f"vocabulary lacks special tokens {missing}")
        if self.text_size < 1 or self.codebook_size < 1:
            raise VocabError(
                f"text_size and codebook_size must be >= 1, got {self.text_size}, {self.codebook_size}"
            )
        if self.image_offset < self.text_size:
            raise VocabError(f"image_offset {self.image_offset} overlaps the text ids [0, {self.text_size})")
        ids = list(self.special_ids.values())
        if len(set(ids)) != len(ids) or any(not 0 <= i < self.image_offset for i in ids):
            raise VocabError(f"special ids must be distinct and below image_offset: {self.special_ids}")

    @classmethod
    def build(
        cls, text_tokenizer, codebook_size: int, conversations: bool = False, locations: int = 0
    ) -> Vocab:
        """Lay out the vocabulary of a `TextTokenizer` (or any HF-wrapping object) and a VQ codebook;
        with `conversations`, also the conversation tokens (`CONVERSATION_SPECIALS`); with
        `locations` > 0, the grounded tasks' tokens and that many location tokens per axis."""
        if locations < 0 or locations == 1:
            raise VocabError(
                f"locations is the number of location bins per axis (0: none, else >= 2), got {locations}"
            )
        text_size = text_tokenizer.vocab_size
        present = text_tokenizer.special_ids()  # token string -> id
        special_ids, nxt = {}, text_size
        wanted = SPECIALS | (CONVERSATION_SPECIALS if conversations else {})
        if locations:
            wanted |= GROUNDING_SPECIALS | location_specials(locations)
        for name, token in wanted.items():
            if token in present:
                special_ids[name] = present[token]
            else:
                special_ids[name], nxt = nxt, nxt + 1
        return cls(text_size, codebook_size, nxt, special_ids)

    @property
    def size(self) -> int:
        """Number of ids the model's embedding and output layer need."""
        return self.image_offset + self.codebook_size

    @property
    def conversations(self) -> bool:
        """Whether this vocabulary has the conversation tokens (`CONVERSATION_SPECIALS`)."""
        return set(CONVERSATION_SPECIALS) <= set(self.special_ids)

    @cached_property
    def location_bins(self) -> int:
        """Location tokens per axis (0: the model was not trained with grounding)."""
        return sum(name.startswith("loc_") for name in self.special_ids)

    @cached_property
    def _location_index(self) -> dict[int, int]:
        return {self.special_ids[f"loc_{i}"]: i for i in range(self.location_bins)}

    def location_id(self, index: int) -> int:
        """The id of location bin `index`."""
        if not 0 <= index < self.location_bins:
            self.special("loc_0")  # the clear error when there are none
            raise ValueError(f"location bin {index} outside [0, {self.location_bins})")
        return self.special_ids[f"loc_{index}"]

    def location_index(self, token_id: int) -> int:
        """The bin of a location token id (ValueError for another id)."""
        try:
            return self._location_index[int(token_id)]
        except KeyError:
            raise ValueError(f"id {token_id} is not a location token") from None

    def is_location_id(self, token_id: int) -> bool:
        return int(token_id) in self._location_index

    def location_id_mask(self, device=None) -> torch.Tensor:
        """(size,) bool, True for location token ids."""
        allowed = torch.zeros(self.size, dtype=torch.bool, device=device)
        allowed[list(self._location_index)] = True
        return allowed

    def special(self, name: str) -> int:
        try:
            return self.special_ids[name]
        except KeyError:
            if name in CONVERSATION_SPECIALS:
                raise VocabError(
                    f"this vocabulary has no {CONVERSATION_SPECIALS[name]}: the model was not trained on "
                    f"conversations; fine-tune it on dialogue shards (configs/shapes/sft.yaml) first"
                ) from None
            if name in GROUNDING_SPECIALS or name.startswith("loc_"):
                raise VocabError(
                    "this vocabulary has no location tokens: the model was not trained with grounding; "
                    "train it with data.location_bins > 0 and grounded tasks in data.ratios "
                    "(gcap, ground, region, plan), or fine-tune it so (--model.init_from)"
                ) from None
            raise KeyError(f"no special token {name!r}; known: {sorted(self.special_ids)}") from None

    def rows_from(self, other: Vocab) -> list[int | None]:
        """For each id of this vocabulary, the id of the same token in `other` (None where `other`
        lacks it): text ids and image codes by position, special tokens by name. ValueError when the
        two do not share their text tokenizer and codebook sizes."""
        if (other.text_size, other.codebook_size) != (self.text_size, self.codebook_size):
            raise VocabError(
                f"vocabularies of {other.text_size} text ids and {other.codebook_size} codes and of "
                f"{self.text_size} and {self.codebook_size} do not share their tokens"
            )
        rows: list[int | None] = list(range(self.text_size)) + [None] * (self.image_offset - self.text_size)
        rows += list(range(other.image_offset, other.size))
        for name, i in self.special_ids.items():
            rows[i] = other.special_ids.get(name)
        return rows

    def image_ids(self, codes):
        """VQ codes (ints, array or tensor) -> unified ids."""
        return codes + self.image_offset

    def codes(self, ids):
        """Unified ids of image tokens -> VQ codes."""
        return ids - self.image_offset

    def is_image(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.image_offset) & (ids < self.size)

    def is_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Plain text ids (the tokenizer's own, special tokens excluded)."""
        specials = torch.tensor(sorted(self.special_ids.values()), device=ids.device)
        return (ids < self.text_size) & ~torch.isin(ids, specials)

    def text_id_mask(self, device=None) -> torch.Tensor:
        """(size,) bool, True for ids that may appear in generated text (plain text and eos)."""
        allowed = torch.zeros(self.size, dtype=torch.bool, device=device)
        allowed[: self.text_size] = True
        allowed[list(self.special_ids.values())] = False
        allowed[self.special("eos")] = True
        return allowed

    def image_id_mask(self, device=None) -> torch.Tensor:
        """(size,) bool, True for image-code ids."""
        allowed = torch.zeros(self.size, dtype=torch.bool, device=device)
        allowed[self.image_offset :] = True
        return allowed

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise VocabError(f"unknown vocabulary keys {unknown}; known keys are {sorted(known)}")
        specials = data.get("special_ids", {})
        if not isinstance(specials, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in specials.values()
        ):
            raise VocabError(f"vocab.special_ids must map token names to integer ids, got {specials!r}"[:300])
        try:
            return cls(**data)
        except TypeError as e:
            raise VocabError(f"bad vocabulary layout: {e}") from e

    def check(
        self,
        text_tokenizer=None,
        codebook_size: int | None = None,
        *,
        text_name="text tokenizer",
        vq_name="VQ",
    ) -> None:
        """Refuse a text tokenizer or a VQ codebook that disagrees with this layout, naming both."""
        if text_tokenizer is not None:
            if text_tokenizer.vocab_size != self.text_size:
                raise VocabError(
                    f"{text_name} has {text_tokenizer.vocab_size} tokens but the model's vocabulary was "
                    f"laid out for {self.text_size}; use the tokenizer.json the model was trained with"
                )
            for name, token in SPECIALS.items():
                i = text_tokenizer.special_ids().get(token)
                if i is not None and i != self.special_ids[name]:
                    raise VocabError(
                        f"{text_name} puts {token} at id {i} but the model's vocabulary has it at "
                        f"{self.special_ids[name]}; use the tokenizer.json the model was trained with"
                    )
        if codebook_size is not None and codebook_size != self.codebook_size:
            raise VocabError(
                f"{vq_name} has {codebook_size} codes but the model's vocabulary was laid out for "
                f"{self.codebook_size}; use the VQ the model was trained with (or re-encode the shards)"
            )


def rows_by_token(weight: torch.Tensor, rows: list[int | None]) -> torch.Tensor:
    """A (ids, dim) weight laid out for another vocabulary: row i is `weight[rows[i]]`, and a token
    with no row (None) starts as the mean of the rows used (an average token, not noise).
    `rows` comes from `Vocab.rows_from`, or names the ids an outside model's rows stand for."""
    used = sorted({i for i in rows if i is not None})
    mean = weight[used].float().mean(0).to(weight.dtype)
    return torch.stack([weight[i] if i is not None else mean for i in rows])
