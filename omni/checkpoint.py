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

from omni.assets import Assets
from omni.generate import check_generation
from omni.model import ModelConfig, Transformer
from omni.release import RUN_FACTS, load_strict, read_release_config, save_tensors, writing_folder
from omni.vocab import Vocab, VocabError, rows_by_token

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
    assets: Assets,
    generation: dict | None = None,
    extra: dict | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    run: str | None = None,
) -> Path:
    """Write a release folder for a model's `state` (a state dict), with its assets' tokenizer.json
    and VQ folder.

    The folder is written whole (omni.release.writing_folder): an existing `folder` is replaced
    only if Omni wrote it as a model release (and, with `run`, that training run did).
    """
    folder, tokenizer, vq, vocab = Path(folder), assets.tokenizer_path, assets.vq_path, assets.vocab
    for path, what in (
        (tokenizer, "text tokenizer"),
        (vq / "config.json", "VQ config"),
        (vq / "model.safetensors", "VQ weights"),
    ):
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} not found; the release folder needs it")
    facts = {k: v for k, v in (extra or {}).items() if k in RUN_FACTS}
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
            "assets": {"tokenizer": file_fingerprint(tokenizer), "vq": assets.fingerprint},
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


def check_release_parts(folder: str | Path, meta: dict) -> Assets:
    """The assets of a release folder, checked: its tokenizer.json and vq/ are the ones its weights
    were trained with (recorded fingerprints) and fit its model config and vocabulary
    (`Assets.check`); a ModelFolderError naming the file and the fix if not."""
    folder = Path(folder)
    config_path = folder / "config.json"
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file():
        raise ModelFolderError(f"{tokenizer} not found; re-copy the whole model folder")
    try:
        assets = Assets.load(tokenizer, folder / "vq")
        assets.check(meta["model"], meta["vocab"], where=str(config_path))  # sizes first: the clearest
        recorded = meta.get("assets") or {}
        held = {"tokenizer": lambda: file_fingerprint(tokenizer), "vq": lambda: assets.fingerprint}
        for name, fingerprint in held.items():
            if name in recorded and (found := fingerprint()) != recorded[name]:
                path = tokenizer if name == "tokenizer" else folder / "vq"
                raise ModelFolderError(
                    f"{path} is not the {name} the model was trained with ({config_path} records "
                    f"{str(recorded[name])[:19]}..., the folder holds {found[:19]}...); re-copy the whole release"
                )
    except ModelFolderError:
        raise
    except ValueError as e:  # VQFolderError, VocabError and Assets.check's
        raise ModelFolderError(str(e)) from e
    return assets


def read_config(folder: str | Path) -> dict:
    """config.json of a model folder, checked: {"model": ModelConfig, "vocab": Vocab, "generation": dict, ...}."""
    folder = Path(folder)
    path = folder / "config.json"
    hint = "train one with `omni train fit --config configs/shapes/model.yaml`"
    raw = read_release_config(folder, FORMAT, FORMAT_VERSION, ModelFolderError, hint)
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
    folder: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: ModelConfig | None = None,
) -> Transformer:
    """The Transformer of a model folder: built on the meta device, loaded strictly, in eval mode.
    `config`: the folder's, when the caller has read it already (`read_config`)."""
    folder = Path(folder)
    config = config or read_config(folder)["model"]
    state = load_state(folder, device)
    with torch.device("meta"):
        model = Transformer(config)
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise ModelFolderError(
                f"the weights in {folder}: {name} is {tensor.dtype}, not a floating-point tensor; the files "
                f"were not written by Omni or were converted wrongly: re-export the model"
            )
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    load_strict(model, state, str(folder), str(folder / "config.json"), ModelFolderError)
    return model.eval()


# What a model must share with a folder it starts from: the shapes of the weights they share, and
# what those weights compute (rotary base, norms). The rest may differ (max_seq_len, backend, ...).
SHARED_FIELDS = ("dim", "n_layers", "n_heads", "kv_heads", "ffn_dim", "qk_norm", "rope_base", "norm_eps")
# Parts a training config may add to a folder's model: they start fresh.
ADDABLE_PARTS = ("understanding.", "image_position.", "code_projection.", "code_readout.", "code_features")


VOCAB_ROWS = ("embedding.weight", "output.weight")  # one row per id of the vocabulary


def load_initial_weights(model: Transformer, vocab: Vocab, folder: str | Path) -> list[str]:
    """Start `model` (a new training run's, over `vocab`) from a model folder's weights: an Omni
    release or an `omni convert` output. Returns the names of the weights the folder lacks, which
    the run's config adds (an understanding encoder, image positions, the appearance table) and
    which keep their fresh initialisation. ModelFolderError naming the fields or weights that differ."""
    folder = Path(folder)
    meta = read_config(folder)
    check_release_parts(folder, meta)
    theirs: ModelConfig = meta["model"]
    try:
        rows = None if meta["vocab"] == vocab else vocab.rows_from(meta["vocab"])
    except VocabError:
        raise ModelFolderError(
            f"{folder} was trained over another vocabulary ({meta['vocab'].size} ids) than data.tokenizer and "
            f"data.vq give ({vocab.size}); train from it with its own: --data.tokenizer {folder}/tokenizer.json "
            f"--data.vq {folder}/vq (and code shards encoded with that VQ)"
        ) from None
    differ = [f for f in SHARED_FIELDS if getattr(theirs, f) != getattr(model.config, f)]
    if differ:
        fix = " ".join(f"--model.transformer.{f.replace('kv_heads', 'n_kv_heads').replace('ffn_dim', 'hidden_dim')} "
                       f"{getattr(theirs, f)}" for f in differ)  # fmt: skip
        raise ModelFolderError(
            f"{folder} holds a model with "
            + ", ".join(f"{f} {getattr(theirs, f)}" for f in differ)
            + " but model.transformer gives "
            + ", ".join(f"{f} {getattr(model.config, f)}" for f in differ)
            + f"; to start from it: {fix}"
        )
    state = load_state(folder)
    if rows is not None:  # the run's vocabulary adds tokens (conversations): the rows by token
        state = {k: rows_by_token(v, rows) if k in VOCAB_ROWS else v for k, v in state.items()}
    ours = model.state_dict()
    fresh = sorted(k for k in ours if k not in state)
    kept_out = [k for k in fresh if not k.startswith(ADDABLE_PARTS)]
    unexpected = sorted(k for k in state if k not in ours)
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}"
        for k, v in state.items()
        if k in ours and v.shape != ours[k].shape
    ]
    if kept_out or unexpected or shapes:
        raise ModelFolderError(
            f"the weights of {folder} do not fit model.transformer: missing {kept_out[:4]}, not in the config "
            f"{unexpected[:4]} (the folder has parts the config leaves out: image_positions, image_features or "
            f"understanding: encoder as the folder's config.json has them), shapes {shapes[:4]}"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            ours[name].copy_(tensor)
    return fresh
