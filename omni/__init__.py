"""Omni: native multimodal models (one Transformer over text tokens and VQ image codes).

`omni.load_pretrained(folder)` loads a trained model folder (see omni.pipeline).
"""

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)


def __getattr__(name: str):
    # Lazy, so that `import omni.data...` does not pull in the model and tokenizers.
    if name == "load_pretrained":
        from omni.pipeline import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'omni' has no attribute {name!r}")
