"""Omni's tokenizers: the VQ-GAN image tokenizer (and, later, the text BPE wrapper)."""

from omni.tokenizers.export import VQFolderError, load_vq, save_vq
from omni.tokenizers.vqgan import PRESETS, VQConfig, VQModel

__all__ = ["PRESETS", "VQConfig", "VQFolderError", "VQModel", "load_vq", "save_vq"]
