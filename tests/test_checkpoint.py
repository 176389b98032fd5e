"""The release folder: save -> load bit-exact without Lightning, sharding, and clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_model
from safetensors.torch import load_file, save_file

import omni
from omni.assets import Assets
from omni.checkpoint import INDEX, ModelFolderError, load_model, load_state, save_pretrained
from omni.tokenizers import save_vq
from omni.tokenizers.vqgan import VQConfig, VQModel


@pytest.fixture()
def release(model_assets, tmp_path):
    """A saved tiny model folder and the model it came from."""
    torch.manual_seed(0)
    model, assets = tiny_model(model_assets)
    folder = save_pretrained(
        tmp_path / "model",
        model.state_dict(),
        model.config,
        assets,
        generation={"mask_steps": 8},
    )
    return folder, model


LOAD_IN_FRESH_PROCESS = """
import sys, torch, omni
from safetensors.torch import save_file
pipe = omni.load_pretrained(sys.argv[1])
assert "lightning" not in sys.modules and "pytorch_lightning" not in sys.modules, "loading imported Lightning"
state = {k: v.contiguous() for k, v in pipe.model.state_dict().items()}
save_file(state, sys.argv[2])
print(pipe.vocab.size, pipe.vq.config.codebook_size, pipe.generation["mask_steps"])
"""


def test_save_then_load_is_bit_exact_in_a_process_without_lightning(release, tmp_path):
    folder, model = release
    assert sorted(p.name for p in folder.iterdir()) == [
        ".omni-release.json",  # the guarded writer's mark: Omni wrote this folder
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vq",
    ]
    out = tmp_path / "reloaded.safetensors"
    res = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(folder), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(model.config.vocab_size), "64", "8"]
    reloaded = load_file(str(out))
    original = model.state_dict()
    assert reloaded.keys() == original.keys()
    assert all(torch.equal(reloaded[k], original[k]) for k in original)
    tokens = torch.randint(0, model.config.vocab_size, (2, 12))
    assert torch.equal(load_model(folder)(tokens), model.eval()(tokens))


def test_large_models_are_sharded_with_an_index(model_assets, release, tmp_path):
    _, model = release
    assets = Assets.load(model_assets.tokenizer, model_assets.vq)
    folder = save_pretrained(
        tmp_path / "sharded",
        model.state_dict(),
        model.config,
        assets,
        max_shard_bytes=100_000,
    )
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (folder / INDEX).is_file() and not (folder / "model.safetensors").exists()
    state = load_state(folder)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    shards[1].unlink()
    with pytest.raises(ModelFolderError, match=f"{shards[1].name}.*listed in.*index"):
        load_model(folder)


def test_saving_again_replaces_the_folder_whole(release, model_assets):
    folder, model = release
    with torch.no_grad():
        model.output.weight.add_(1.0)
    assets = Assets.load(model_assets.tokenizer, model_assets.vq)
    save_pretrained(folder, model.state_dict(), model.config, assets)
    assert torch.equal(load_model(folder).output.weight, model.output.weight)
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no temporaries left
    # A crash between the two renames leaves the old release beside the missing folder: say so.
    folder.rename(folder.with_name(".model.old"))
    with pytest.raises(ModelFolderError, match=r"\.model\.old holds the previous release"):
        omni.load_pretrained(folder)


def test_truncated_weights_are_a_clear_error(release):
    folder, _ = release
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelFolderError, match=r"model\.safetensors is unreadable or truncated"):
        omni.load_pretrained(folder)


def test_missing_files_and_bad_configs_name_the_file(release):
    folder, _ = release
    config_path = folder / "config.json"
    good = json.loads(config_path.read_text())

    def write(cfg):
        config_path.write_text(json.dumps(cfg))

    write({**good, "model": {**good["model"], "n_experts": 8}})
    with pytest.raises(
        ModelFolderError, match=r"config\.json: bad model config: unknown model config keys \['n_experts'\]"
    ):
        omni.load_pretrained(folder)
    write({**good, "model": {**good["model"], "dim": "64"}})
    with pytest.raises(ModelFolderError, match=r"config\.json: model\.dim should be int"):
        omni.load_pretrained(folder)
    write({**good, "model": {**good["model"], "dim": 128, "hidden_dim": 0}})
    with pytest.raises(ModelFolderError, match="do not match.*wrong shapes"):
        omni.load_pretrained(folder)
    write({**good, "model": {**good["model"], "vocab_size": 5}})
    with pytest.raises(ModelFolderError, match="disagrees with the vocabulary layout"):
        omni.load_pretrained(folder)
    write({**good, "model": {**good["model"], "image_positions": -1}})
    with pytest.raises(ModelFolderError, match="image_positions must be >= 0"):
        omni.load_pretrained(folder)
    write({**good, "model": {**good["model"], "image_codes": 32, "image_features": 48}})
    with pytest.raises(ModelFolderError, match="image_codes 32 disagrees with the vocabulary's 64"):
        omni.load_pretrained(folder)
    write({**good, "model": {**good["model"], "image_positions": 16}})  # the VQ's grid is 8x8
    with pytest.raises(
        ModelFolderError, match=r"image_positions 16 disagrees with .*vq \(8x8 codes of 4x4 px need 64\)"
    ):
        omni.load_pretrained(folder)
    config_path.write_text("{not json")
    with pytest.raises(ModelFolderError, match=r"config\.json is not valid JSON"):
        omni.load_pretrained(folder)
    write(good)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match=r"tokenizer\.json not found"):
        omni.load_pretrained(folder)
    with pytest.raises(ModelFolderError, match="does not exist.*omni train fit"):
        omni.load_pretrained(folder.parent / "nope")


def test_a_vq_whose_codebook_disagrees_is_refused(release):
    folder, _ = release
    shutil.rmtree(folder / "vq")
    save_vq(VQModel(VQConfig.from_name("shapes-32", channels=16, codebook_size=128)), folder / "vq")
    with pytest.raises(
        ModelFolderError, match=r"vq has 128 codes but the model's vocabulary was laid out for 64"
    ):
        omni.load_pretrained(folder)


def test_extra_tensors_in_the_weights_are_refused(release):
    folder, _ = release
    state = load_file(str(folder / "model.safetensors"))
    save_file({**state, "blocks.9.ffn.w2.weight": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelFolderError, match=r"unexpected \['blocks\.9\.ffn\.w2\.weight'\]"):
        load_model(folder)


NO_UNPICKLING = """
import pickle, sys
import torch, omni

def refuse(*args, **kwargs):
    raise AssertionError("loading a release unpickled something")

class RefusingUnpickler(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
        refuse()

def audit(event, args):
    if event == "pickle.find_class":  # any unpickler resolving a global, however it was reached
        refuse()

# Imports are done; from here on any unpickling, by torch.load or by pickle itself, fails.
torch.load = pickle.load = pickle.loads = refuse
pickle.Unpickler = RefusingUnpickler
sys.addaudithook(audit)
pipe = omni.load_pretrained(sys.argv[1])
images = pipe.generate_images(["a red circle"], seed=0)
print(type(pipe.caption(images)[0]).__name__, images[0].size)
"""


class _Trap:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_a_release_never_unpickles(tiny_releases, tmp_path):
    import pickle

    folder = tmp_path / "model"
    shutil.copytree(tiny_releases["ar"], folder)
    marker = tmp_path / "unpickled"
    # A downloaded folder may carry pickles beside the safetensors; they must never be opened.
    for name in ("pytorch_model.bin", "model.ckpt", "vq/model.pt"):
        (folder / name).write_bytes(pickle.dumps(_Trap(marker)))
    res = subprocess.run(
        [sys.executable, "-c", NO_UNPICKLING, str(folder)], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["str", "(32,", "32)"]
    assert not marker.exists()


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_release_files_get_the_mode_a_normal_write_gets(model_assets, tmp_path, mask):
    """safetensors and mkdtemp create 0600 / 0700: a release must be readable as the umask allows."""
    import os
    import stat

    from safetensors import safe_open

    torch.manual_seed(0)
    model, assets = tiny_model(model_assets)
    old = os.umask(mask)
    try:
        vq = save_vq(VQModel(VQConfig.from_name("shapes-32", channels=16, codebook_size=64)), tmp_path / "vq")
        args = (model.config, Assets.load(model_assets.tokenizer, vq))
        single = save_pretrained(tmp_path / "single", model.state_dict(), *args)
        sharded = save_pretrained(tmp_path / "sharded", model.state_dict(), *args, max_shard_bytes=100_000)
    finally:
        os.umask(old)
    paths = [vq, *vq.iterdir(), *single.rglob("*"), single, *sharded.rglob("*"), sharded]
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    for path in paths:
        wanted = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == wanted, path
    for weights in [vq / "model.safetensors", *single.rglob("*.safetensors"), *sharded.glob("*.safetensors")]:
        with safe_open(str(weights), framework="pt") as fh:
            assert fh.metadata() == {"format": "pt"}, weights  # what Hugging Face loaders expect
    assert (
        json.loads((single / "config.json").read_text())["format"] == "omni-model"
    )  # Omni's facts stay here
