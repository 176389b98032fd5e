"""Weights in and out of Omni's folders: Hugging Face Llama-family LLMs in (`from_hf`), and Omni
models a causal Llama can express out (`to_hf`).

    from omni.convert import from_hf
    from_hf("SmolLM-135M/", "runs/smol-omni", vq="runs/shapes/vq")   # then train.py ... init from it

Inside Omni everything is a release folder (`omni.checkpoint`); converters live at the edges.
"""

from omni.convert.hf import UnsupportedModelError, from_hf, to_hf

__all__ = ["UnsupportedModelError", "from_hf", "to_hf"]
