"""The release format of a trained model: a folder that other code loads with one call.

    runs/shapes/model/
        config.json          model config, vocabulary layout, generation defaults
        model.safetensors    weights (above `max_shard_bytes`: model-0000k-of-0000n.safetensors
                             plus model.safetensors.index.json, the Hugging Face layout)
        tokenizer.json       the text tokenizer
        vq/                  the VQ tokenizer's folder (config.json + model.safetensors)

`save_pretrained` writes the whole folder beside its destination and swaps it in with renames,
so a reader (or a crash) never meets a half-written release, and it only ever replaces a release
that Omni wrote (see omni.release). `load_model` builds the model on
the meta device and loads the weights strictly; nothing is unpickled, and a bad folder is a
`ModelFolderError` naming the file and the fix. Lightning `.ckpt` files are for resuming only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from omni.generate import check_generation
from omni.model import ModelConfig, Transformer
from omni.release import save_tensors, writing_folder
from omni.tokenizers.export import vq_fingerprint
from omni.tokenizers.vqgan import VQConfig
from omni.vocab import Vocab, VocabError

FORMAT = "omni-model"  # config.json's "format" (the weights' safetensors metadata is HF's "pt")
FORMAT_VERSION = 1
INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 2 * 1024**3


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded; the message names the file and the fix."""


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards, current, size = [], {}, 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if current and size + n > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name], size = t, size + n
    return [*shards, current]


def save_pretrained(
    folder: str | Path,
    state: dict[str, torch.Tensor],
    config: ModelConfig,
    vocab: Vocab,
    tokenizer: str | Path,
    vq: str | Path,
    generation: dict | None = None,
    extra: dict | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    run: str | None = None,
) -> Path:
    """Write a release folder for a model's `state` (a state dict), its tokenizer.json and VQ folder.

    The folder is written whole (omni.release.writing_folder): an existing `folder` is replaced
    only if Omni wrote it as a model release (and, with `run`, that training run did).
    """
    folder, tokenizer, vq = Path(folder), Path(tokenizer), Path(vq)
    for path, what in (
        (tokenizer, "text tokenizer"),
        (vq / "config.json", "VQ config"),
        (vq / "model.safetensors", "VQ weights"),
    ):
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} not found; the release folder needs it")
    facts = {k: v for k, v in (extra or {}).items() if k == "trained_steps"}
    with writing_folder(folder, "model", run=run, facts=facts, what="release folder") as tmp:
        state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        shards = _shards(state, max_shard_bytes)
        if len(shards) == 1:
            save_tensors(tmp / "model.safetensors", shards[0])
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_tensors(tmp / name, shard)
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(t.numel() * t.element_size() for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        (tmp / "vq").mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(vq / name, tmp / "vq" / name)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": config.to_dict(),
            "vocab": vocab.to_dict(),
            "generation": generation or {},
            # Which tokenizer and VQ the weights were trained with: loading refuses other ones
            # of the same sizes, which would load silently and mean other words and pictures.
            "assets": {"tokenizer": file_fingerprint(tokenizer), "vq": vq_fingerprint(vq)},
            **(extra or {}),
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def file_fingerprint(path: str | Path) -> str:
    """`sha256:<hex>` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def check_release_parts(folder: str | Path, meta: dict, vq_config: VQConfig) -> None:
    """The release's tokenizer.json and vq/ are the ones its weights were trained with, and the
    VQ's grid and patch size fit the model's image fields; a ModelFolderError naming both if not."""
    folder = Path(folder)
    config_path = folder / "config.json"
    assets = meta.get("assets") or {}
    found = {
        "tokenizer": (folder / "tokenizer.json", lambda: file_fingerprint(folder / "tokenizer.json")),
        "vq": (folder / "vq", lambda: vq_fingerprint(folder / "vq")),
    }
    for name, (path, fingerprint) in found.items():
        if name in assets and (held := fingerprint()) != assets[name]:
            raise ModelFolderError(
                f"{path} is not the {name} the model was trained with ({config_path} records "
                f"{str(assets[name])[:19]}..., the folder holds {held[:19]}...); re-copy the whole release"
            )
    config: ModelConfig = meta["model"]
    side, patch = vq_config.resolution // vq_config.downsample, vq_config.downsample
    wanted = {"image_positions": side * side, "image_features": 3 * patch * patch}
    for field, value in wanted.items():
        if getattr(config, field) not in (0, value):
            raise ModelFolderError(
                f"{config_path}: model.{field} {getattr(config, field)} disagrees with {folder / 'vq'} "
                f"({side}x{side} codes of {patch}x{patch} px need {value}); the model was trained with another VQ"
            )


def read_config(folder: str | Path) -> dict:
    """config.json of a model folder, checked: {"model": ModelConfig, "vocab": Vocab, "generation": dict, ...}."""
    folder = Path(folder)
    if not folder.is_dir():
        old = folder.with_name(f".{folder.name}.old")
        hint = (
            f"; {old} holds the previous release left by an interrupted save: rename it to {folder}"
            if old.is_dir()
            else "; train one with `python train.py fit --config configs/shapes/model.yaml`"
        )
        raise ModelFolderError(f"model folder {folder} does not exist{hint}")
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"{path} not found: is {folder} an Omni model folder (written by train.py)?")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise ModelFolderError(f"{path} is not valid JSON ({str(e)[:200]}); re-export the model") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelFolderError(f'{path} is not an {FORMAT} config (expected "format": "{FORMAT}")')
    version = raw.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise ModelFolderError(
            f"{path}: format_version {version!r} is not one this Omni reads (1 to {FORMAT_VERSION}); "
            f"a newer Omni wrote it: upgrade omni-multimodal"
        )
    for key in ("model", "vocab"):
        if not isinstance(raw.get(key), dict):
            raise ModelFolderError(f"{path} lacks the {key!r} section; re-export the model")
    generation = raw.get("generation", {})
    try:
        if not isinstance(generation, dict):
            raise ValueError(f"generation must be an object, got {generation!r}")
        check_generation(generation)
    except ValueError as e:
        raise ModelFolderError(f"{path}: {e}; fix the value or remove it (the default is used)") from e
    for name, value in raw["model"].items():
        default = getattr(ModelConfig, name, None)  # unknown keys are reported by from_dict below
        if (
            default is not None
            and not isinstance(value, type(default))
            and not (isinstance(default, float) and isinstance(value, int))
        ):
            raise ModelFolderError(
                f"{path}: model.{name} should be {type(default).__name__}, got {value!r}; fix the value"
            )
    try:
        config = ModelConfig.from_dict(raw["model"])
    except (TypeError, ValueError) as e:
        raise ModelFolderError(f"{path}: bad model config: {e}; fix or remove the offending key") from e
    try:
        vocab = Vocab.from_dict(raw["vocab"])
    except VocabError as e:
        raise ModelFolderError(f"{path}: {e}") from e
    if vocab.size != config.vocab_size:
        raise ModelFolderError(
            f"{path}: model.vocab_size {config.vocab_size} disagrees with the vocabulary layout ({vocab.size} ids)"
        )
    if min(config.image_positions, config.image_features) < 0:
        raise ModelFolderError(
            f"{path}: model.image_positions / image_features are -1 (unresolved): a release holds the values "
            f"training took from the VQ; re-export the model"
        )
    if config.image_features and config.image_codes != vocab.codebook_size:
        raise ModelFolderError(
            f"{path}: model.image_codes {config.image_codes} disagrees with the vocabulary's "
            f"{vocab.codebook_size} image codes; re-export the model"
        )
    return {**raw, "model": config, "vocab": vocab, "generation": raw.get("generation", {})}


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> file that holds it, for single-file and sharded folders."""
    single, index = folder / "model.safetensors", folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ModelFolderError(
                f"{index} is not a valid safetensors index ({e}); re-export the model"
            ) from e
        if not isinstance(weight_map, dict):
            raise ModelFolderError(f"{index} has no weight_map object; re-export the model")
        for f in set(weight_map.values()):
            # A bare file name inside the folder: "../x" or "/x" would read any file on the machine
            # (and the errors would tell which exist), so refuse before looking at the path.
            if not isinstance(f, str) or not f or f in (".", "..") or Path(f).name != f or "\\" in f:
                raise ModelFolderError(
                    f"{index} lists the weight file {f!r}, which is not a file name inside {folder}; "
                    f"a release only reads its own files: re-export the model"
                )
        files = {name: folder / f for name, f in weight_map.items()}
        for f in sorted(set(files.values())):
            if not f.is_file():
                raise ModelFolderError(f"{f} (listed in {index}) not found; re-copy the whole model folder")
        return files
    if not single.is_file():
        raise ModelFolderError(f"{single} not found; re-export the model or re-copy the folder")
    return {}  # read the names from the single file


def load_state(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a model folder (single or sharded safetensors), never unpickling."""
    folder = Path(folder)
    files = _weight_files(folder)
    by_file: dict[Path, list[str] | None] = {}
    if files:
        for name, f in files.items():
            by_file.setdefault(f, []).append(name)
    else:
        by_file[folder / "model.safetensors"] = None
    state = {}
    for f, names in by_file.items():
        try:
            with safe_open(str(f), framework="pt", device=str(device)) as fh:
                for name in names if names is not None else fh.keys():
                    state[name] = fh.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise ModelFolderError(f"{f} is unreadable or truncated ({e}); re-export or re-copy it") from e
    return state


def load_model(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Transformer:
    """The Transformer of a model folder: built on the meta device, loaded strictly, in eval mode."""
    folder = Path(folder)
    config = read_config(folder)["model"]
    state = load_state(folder, device)
    with torch.device("meta"):
        model = Transformer(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or bad_shapes:
        raise ModelFolderError(
            f"the weights in {folder} do not match {folder / 'config.json'}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {bad_shapes[:5]}; the files come from different models, re-export"
        )
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise ModelFolderError(
                f"the weights in {folder}: {name} is {tensor.dtype}, not a floating-point tensor; the files "
                f"were not written by Omni or were converted wrongly: re-export the model"
            )
        if not torch.isfinite(tensor).all():
            raise ModelFolderError(
                f"the weights in {folder}: {name} holds NaN or inf values; the model is damaged (a run that "
                f"diverged, or a broken copy): re-export it from a good checkpoint"
            )
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
