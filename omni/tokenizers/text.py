"""The text side: byte-level BPE training and a thin wrapper over any Hugging Face `tokenizer.json`.

The special tokens of the unified vocabulary are reserved in every tokenizer Omni trains, as
atomic tokens that the BPE never splits or merges into other text.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# The unified vocabulary's special tokens (omni.vocab decides where they sit in the id space).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|boi|>",  # begin of image
    "<|eoi|>",  # end of image
    "<|mask|>",  # masked image token (mask-mode generation)
    "<|t2i|>",  # task: text to image
    "<|mmu|>",  # task: image understanding (captioning)
    "<|vqa|>",  # task: question answering about an image
    "<|lm|>",  # task: text only
    "<|sep|>",
)


def train_bpe(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on an iterable of strings, with `SPECIAL_TOKENS` reserved first."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


class TextTokenizer:
    """Encode and decode text with a Hugging Face tokenizer (ours or any other `tokenizer.json`)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"text tokenizer {path} not found; train one with "
                f"`python tokenizers/train_text.py --shards ... --out {path}`"
            )
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # the Rust library raises plain Exceptions for bad JSON
            raise ValueError(f"{path} is not a valid tokenizer.json ({e})") from e

    def save(self, path: str | Path) -> None:
        from omni.atomic import write_file_atomically

        write_file_atomically(path, lambda p: self.tokenizer.save(str(p)))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        """Id of a (special) token; KeyError naming it when the tokenizer lacks it."""
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in this tokenizer's vocabulary")
        return i

    def special_ids(self) -> dict[str, int]:
        """Ids of the reserved `SPECIAL_TOKENS` present in this tokenizer."""
        return {t: i for t in SPECIAL_TOKENS if (i := self.tokenizer.token_to_id(t)) is not None}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
