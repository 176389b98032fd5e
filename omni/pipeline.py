"""`omni.load_pretrained(folder)`: everything a trained model needs, loaded from its release folder.

    pipe = omni.load_pretrained("runs/shapes/model")
    pipe.model, pipe.vocab, pipe.tokenizer, pipe.vq, pipe.generation

No Lightning, no pickles: JSON and safetensors only (see `omni.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from omni.checkpoint import ModelFolderError, load_model, read_config
from omni.model import Transformer
from omni.tokenizers.export import VQFolderError, load_vq
from omni.tokenizers.text import TextTokenizer
from omni.tokenizers.vqgan import VQModel
from omni.vocab import Vocab, VocabError


@dataclass
class OmniPipeline:
    """A loaded model folder: the Transformer, its vocabulary, text tokenizer and VQ tokenizer."""

    model: Transformer
    vocab: Vocab
    tokenizer: TextTokenizer
    vq: VQModel
    generation: dict = field(default_factory=dict)
    folder: Path | None = None

    @property
    def device(self) -> torch.device:
        return self.model.output.weight.device


def load_pretrained(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> OmniPipeline:
    """Load a model folder written by `train.py` (see omni.checkpoint for its layout)."""
    folder = Path(folder)
    meta = read_config(folder)
    vocab: Vocab = meta["vocab"]
    tokenizer_path = folder / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ModelFolderError(f"{tokenizer_path} not found; re-copy the whole model folder")
    try:
        tokenizer = TextTokenizer.from_file(tokenizer_path)
        vq = load_vq(folder / "vq", device=device)
        vocab.check(
            tokenizer, vq.config.codebook_size, text_name=str(tokenizer_path), vq_name=str(folder / "vq")
        )
    except (ValueError, VQFolderError, VocabError) as e:
        raise ModelFolderError(str(e)) from e
    model = load_model(folder, device=device, dtype=dtype)
    return OmniPipeline(model, vocab, tokenizer, vq, dict(meta["generation"]), folder)
