"""The VQ release folder: `config.json` + `model.safetensors`, written whole, loaded strictly.

save_vq(model, "runs/shapes/vq")
vq = load_vq("runs/shapes/vq")   # no Lightning, no pickle; a clear error for a bad folder
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from omni.release import RUN_FACTS, load_strict, read_release_config, save_tensors, writing_folder
from omni.tokenizers.vqgan import VQConfig, VQModel

FORMAT = "omni-vq"
FORMAT_VERSION = 2  # 2: the `conv` architecture became LlamaGen's layout (attention, z_channels)


class VQFolderError(ValueError):
    """A VQ folder that cannot be loaded; the message names the file and the fix."""


def save_vq(model: VQModel, folder: str | Path, extra: dict | None = None, run: str | None = None) -> Path:
    """Write the VQ folder (model.safetensors + config.json) whole (omni.release.writing_folder):
    an existing `folder` is replaced only if Omni wrote it as a VQ folder (with `run`: that run)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vq": model.config.to_dict(),
        **(extra or {}),
    }
    facts = {k: v for k, v in (extra or {}).items() if k in RUN_FACTS}
    with writing_folder(folder, "vq", run=run, facts=facts, what="VQ folder") as tmp:
        save_tensors(tmp / "model.safetensors", state)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return Path(folder)


def vq_fingerprint(folder: str | Path) -> str:
    """`sha256:<hex>` over the VQ's tensors (names, dtypes, shapes, bytes): which weights made a
    set of codes, whatever the file's header holds.

    Code shards record it (omni.data.codes); training refuses shards whose fingerprint is
    not that of its VQ folder, since codes of two tokenizers mean different things.
    """
    weights = Path(folder) / "model.safetensors"
    if not weights.is_file():
        raise VQFolderError(f"{weights} not found; re-export the tokenizer")
    digest = hashlib.sha256()
    try:
        with safe_open(str(weights), framework="pt") as fh:
            for name in sorted(fh.keys()):
                tensor = fh.get_tensor(name).contiguous().reshape(-1)  # 1-d: any dtype views as bytes
                digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    except (SafetensorError, OSError) as e:
        raise VQFolderError(f"{weights} is unreadable or truncated ({e}); re-export or re-copy it") from e
    return f"sha256:{digest.hexdigest()}"


def read_vq_config(folder: str | Path) -> VQConfig:
    """The `VQConfig` of a VQ folder, validated."""
    path = Path(folder) / "config.json"
    hint = "train one with `omni tokenizer train-vq fit --config configs/shapes/vq.yaml`"
    config = read_release_config(folder, FORMAT, FORMAT_VERSION, VQFolderError, hint)
    if "vq" not in config:
        raise VQFolderError(f"{path} lacks the 'vq' section; re-export the tokenizer")
    if config.get("format_version", FORMAT_VERSION) < 2 and config["vq"].get("architecture") == "conv":
        raise VQFolderError(
            f"{path}: a `conv` VQ written by Omni 0.1.0, whose conv layout (no attention, no "
            f"z_channels) this Omni no longer builds: retrain it with `omni tokenizer train-vq fit` "
            f"(the `conv` presets are now LlamaGen's VQ-16 / VQ-8, which `omni convert "
            f"from-llamagen-vq` imports), or load it with Omni 0.1.0"
        )
    fields = set(VQConfig.__dataclass_fields__)
    unknown = sorted(set(config["vq"]) - fields)
    if unknown:
        raise VQFolderError(f"{path}: unknown VQ config keys {unknown}; known keys are {sorted(fields)}")
    try:
        return VQConfig(**config["vq"])
    except (TypeError, ValueError) as e:
        raise VQFolderError(f"{path}: bad VQ config: {e}") from e


def load_vq(folder: str | Path, device: str | torch.device = "cpu") -> VQModel:
    """Build the VQ model of a folder and load its weights strictly, in eval mode."""
    folder = Path(folder)
    config = read_vq_config(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise VQFolderError(f"{weights} not found; re-export the tokenizer")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as e:
        raise VQFolderError(f"{weights} is unreadable or truncated ({e}); re-export or re-copy it") from e
    model = VQModel(config).to(device)
    load_strict(model, state, str(weights), str(folder / "config.json"), VQFolderError)
    return model.eval()
