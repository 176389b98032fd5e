"""Weights in and out of Omni's folders: Hugging Face Llama-family LLMs in (`from_hf`), Omni
models a causal Llama can express out (`to_hf`), and LlamaGen's VQ tokenizers in
(`from_llamagen_vq`).

    from omni.convert import from_hf, from_llamagen_vq
    from_llamagen_vq("vq_ds16_c2i.pt", "runs/llamagen-vq16")                       # an Omni VQ folder
    from_hf("SmolLM-135M/", "runs/smol-omni", vq="runs/llamagen-vq16")   # then train.py ... init from it

Inside Omni everything is a release folder (`omni.checkpoint`); converters live at the edges.
"""

from omni.convert.hf import UnsupportedModelError, from_hf, to_hf
from omni.convert.llamagen import LlamaGenVQError, from_llamagen_vq

__all__ = ["LlamaGenVQError", "UnsupportedModelError", "from_hf", "from_llamagen_vq", "to_hf"]
