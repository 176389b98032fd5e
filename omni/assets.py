"""The assets a model is built around: its text tokenizer and its VQ, and every fact derived from them.

    assets = Assets.load("runs/shapes/tokenizer.json", "runs/shapes/vq")
    assets.vocab                      # the unified vocabulary (omni.vocab)
    assets.image_tokens               # codes per image (the VQ's grid)
    config = assets.model_config(Architecture(dim=192, image_positions=True))  # sizes filled in
    assets.check(config, vocab)       # a release's config against the assets it ships with

Resolved once, handed to both the model (its `ModelConfig`) and the data (the vocabulary), in
training (`omni.training`: the data module loads them, the module receives them) and in
`omni.load_pretrained`. This is the one place that knows how a tokenizer and a VQ become numbers
in a model's config, and the one place that checks a model against them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

import torch

from omni.model import Architecture, ModelConfig
from omni.tokenizers.export import load_vq, read_vq_config, vq_fingerprint
from omni.tokenizers.text import TextTokenizer
from omni.tokenizers.vqgan import VQConfig
from omni.vocab import Vocab


@dataclass(frozen=True, eq=False)
class Assets:
    """A text tokenizer and a VQ folder, read and checked, with the vocabulary they lay out."""

    tokenizer_path: Path
    vq_path: Path
    tokenizer: TextTokenizer
    vq_config: VQConfig
    vocab: Vocab

    @classmethod
    def load(
        cls, tokenizer: str | Path, vq: str | Path, conversations: bool = False, locations: int = 0
    ) -> Assets:
        """Read a tokenizer.json and a VQ folder (its config; the weights are read when needed);
        `conversations` adds the conversation tokens to the vocabulary, `locations` the grounded
        tasks' tokens and that many location bins per axis (`omni.vocab`)."""
        tokenizer, vq = Path(tokenizer), Path(vq)
        text = TextTokenizer.from_file(tokenizer)
        vq_config = read_vq_config(vq)
        vocab = Vocab.build(text, vq_config.codebook_size, conversations, locations)
        return cls(tokenizer, vq, text, vq_config, vocab)

    @property
    def image_tokens(self) -> int:
        """Codes per image: the VQ's grid, side x side."""
        return self.vq_config.grid**2

    @property
    def patch_features(self) -> int:
        """Values describing one code's decoded patch: 3 colours x f x f pixels."""
        return 3 * self.vq_config.downsample**2

    @cached_property
    def fingerprint(self) -> str:
        """The VQ weights' fingerprint (omni.tokenizers.export.vq_fingerprint)."""
        return vq_fingerprint(self.vq_path)

    def model_config(self, architecture: Architecture) -> ModelConfig:
        """The complete config of a Transformer of `architecture` over these assets."""
        chosen = {f.name: getattr(architecture, f.name) for f in fields(Architecture)}
        return ModelConfig(
            **chosen
            | {
                "vocab_size": self.vocab.size,
                "image_positions": self.image_tokens if architecture.image_positions else 0,
                "image_features": self.patch_features if architecture.image_features else 0,
                "image_codes": self.vocab.codebook_size if architecture.image_features else 0,
                "encoder": architecture.encoder.resolved(self.vq_config.resolution, self.vq_config.grid),
            }
        )

    def code_appearance(self) -> torch.Tensor:
        """The VQ's code appearance table (codebook_size, patch_features) (`VQModel.code_appearance`)."""
        return load_vq(self.vq_path).code_appearance()

    def check(self, config: ModelConfig, vocab: Vocab, where: str = "the model") -> None:
        """Refuse a model (its config and vocabulary) that these assets do not fit; ValueError
        naming `where`, the assets and the value each needs."""
        vocab.check(
            self.tokenizer,
            self.vq_config.codebook_size,
            text_name=str(self.tokenizer_path),
            vq_name=str(self.vq_path),
        )
        if vocab.size != config.vocab_size:
            raise ValueError(
                f"{where}: model.vocab_size {config.vocab_size} disagrees with its vocabulary ({vocab.size} ids)"
            )
        side, patch = self.vq_config.grid, self.vq_config.downsample
        wanted = {"image_positions": self.image_tokens, "image_features": self.patch_features}
        for name, value in wanted.items():
            if getattr(config, name) not in (0, value):
                raise ValueError(
                    f"{where}: model.{name} {getattr(config, name)} disagrees with {self.vq_path} "
                    f"({side}x{side} codes of {patch}x{patch} px need {value}); the model was trained "
                    f"with another VQ"
                )
        if config.understanding == "encoder" and config.encoder.patches != self.image_tokens:
            raise ValueError(
                f"{where}: its understanding encoder gives {config.encoder.patches} vectors per image but "
                f"{self.vq_path} has {side}x{side} codes; the model was trained with another VQ"
            )
        if config.image_features and config.image_codes != vocab.codebook_size:
            raise ValueError(
                f"{where}: model.image_codes {config.image_codes} disagrees with the vocabulary's "
                f"{vocab.codebook_size} image codes"
            )
