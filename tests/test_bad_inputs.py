"""The bad-input catalogue: each fault goes through a real entry point (tokenizers/encode_shards.py,
train.py, sample.py) and must end in "skipped and counted" (data) or one clear error line that
names the file and the fix (everything else); never a library traceback, never lost work.

conftest.py prints how many faults were tried at the end of the test run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds
from conftest import REPO, good, odd_images, png_bytes, tiny_model, tiny_train_command
from PIL import Image

from omni.commands import main as omni

ODD = ["rgba", "grey16", "grey", "tiny", "wide"]  # RGBA, 16-bit, greyscale, 1x1, 10000x10


def clean_error(res: subprocess.CompletedProcess, *phrases: str) -> str:
    """A run that failed with one `error:` line holding every phrase, and no traceback."""
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    line = next((x for x in res.stderr.splitlines() if x.startswith("error:")), "")
    for phrase in phrases:
        assert phrase in line, (phrase, res.stderr[-2000:])
    return line


def digest(folder) -> dict[str, str]:
    """Content hash of every file under a folder (to prove nothing was rewritten)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------------------------
# Data: image shards through tokenizers/encode_shards.py, code shards through train.py


@pytest.fixture(scope="module")
def encoded(model_assets, shapes_dir, tmp_path_factory):
    """Image shards with every data fault, encoded by the real CLI: (result, code shard folder)."""
    root = tmp_path_factory.mktemp("bad_data")
    images = root / "images"
    images.mkdir()
    png = good(0)["png"]
    odd = odd_images()
    samples = [good(i) for i in range(1, 9)]
    samples += [{"__key__": f"odd-{n}", "png": png_bytes(odd[n]), "txt": b"a red circle"} for n in ODD]
    samples += [
        {"__key__": "bad-bytes", "png": b"this is not an image", "txt": b"a red circle"},
        {"__key__": "bad-truncated-png", "png": png[: len(png) // 3], "txt": b"a red circle"},
        {"__key__": "bad-empty-caption", "png": png, "txt": b"  \n"},
        {"__key__": "bad-100kB-caption", "png": png, "txt": b"a red circle " * 8000},
    ]
    with wds.TarWriter(str(images / "messy-000000.tar")) as sink:
        for s in samples:
            sink.write(s)
    whole = (shapes_dir / "train-000001.tar").read_bytes()
    (images / "cut-000000.tar").write_bytes(whole[: len(whole) // 2 // 512 * 512 + 700])
    shutil.copy(shapes_dir / "train-000000.tar", images / "train-000000.tar")
    codes = root / "codes"
    res = subprocess.run(
        [sys.executable, "tokenizers/encode_shards.py", "--vq", str(model_assets.vq)]
        + ["--shards", f"{images}/*.tar", "--out", str(codes)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return res, codes


def code_keys(shard) -> list[str]:
    return [s["__key__"] for s in wds.WebDataset(str(shard), shardshuffle=False)]


def test_undecodable_image_bytes_are_skipped_and_counted(encoded):
    res, codes = encoded
    assert res.returncode == 0, res.stderr[-3000:]
    assert "skipped: undecodable image: 2" in res.stdout
    keys = code_keys(codes / "messy-000000.tar")
    assert "bad-bytes" not in keys and "bad-truncated-png" not in keys
    counts = json.loads((codes / "codes_info.json").read_text())["counts"]
    assert counts["skipped: undecodable image"] == 2


def test_a_truncated_tar_keeps_its_readable_samples_and_is_counted(encoded):
    res, codes = encoded
    assert "truncated shard (re-create it): 1" in res.stdout
    assert 40 <= len(code_keys(codes / "cut-000000.tar")) < 100


@pytest.mark.parametrize("name", ODD)
def test_odd_images_are_converted_not_lost(encoded, name):
    # RGBA (onto black), 16-bit (scaled), greyscale, 1x1 and 10000x10 (shorter side resized,
    # centre-cropped) all become 32x32 RGB and are encoded.
    res, codes = encoded
    assert f"odd-{name}" in code_keys(codes / "messy-000000.tar")


@pytest.fixture(scope="module")
def trained(encoded, model_assets, tmp_path_factory):
    """train.py for 10 steps on the encoded shards (with the empty and 100 kB captions in them)."""
    _, codes = encoded
    run = tmp_path_factory.mktemp("bad_run") / "run"
    cmd = tiny_train_command(
        model_assets,
        run,
        f"--data.train_shards={codes}/messy-*.tar",
        "--data.val_shards=null",
        "--data.shuffle_buffer=10",
        "--trainer.max_steps=10",
        "--trainer.callbacks.init_args.every_n_train_steps=10",
    )
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return cmd, run, res


def test_an_empty_caption_is_skipped_and_counted(trained):
    *_, res = trained
    assert "skipped sample: empty caption at" in res.stderr and "bad-empty-caption" in res.stderr


def test_a_100_kB_caption_is_skipped_and_counted(trained):
    *_, res = trained
    assert "skipped sample: over-long caption at" in res.stderr and "bad-100kB-caption" in res.stderr
    assert "103999 characters > max_caption_chars=2048" in res.stderr  # the stripped caption


def test_a_shard_pattern_matching_nothing(model_assets, tmp_path):
    pattern = str(tmp_path / "typo-*.tar")
    cmd = tiny_train_command(model_assets, tmp_path / "run", f"--data.train_shards={pattern}")
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    clean_error(res, "no shards match", pattern)
    assert "Sanity Checking" not in res.stderr and not (tmp_path / "run").exists()  # refused up front


def test_a_vq_whose_codebook_disagrees_with_the_shards(trained, model_assets, tmp_path):
    from omni.tokenizers import VQConfig, VQModel, save_vq

    cmd, run, _ = trained
    other = tmp_path / "vq128"
    save_vq(VQModel(VQConfig.from_name("shapes-32", channels=16, codebook_size=128)), other)
    before = digest(run)
    res = subprocess.run([*cmd, f"--data.vq={other}"], cwd=REPO, capture_output=True, text=True)
    clean_error(res, "encoded with 64 codes", str(other), "re-encode")
    assert digest(run) == before


def test_code_shards_of_a_retrained_vq_with_the_same_codebook_size(trained, model_assets, tmp_path):
    """Same codebook size, other weights: the ids would load fine and mean other pictures."""
    import torch

    from omni.tokenizers import VQConfig, VQModel, save_vq

    cmd, run, _ = trained
    other = tmp_path / "retrained-vq"
    torch.manual_seed(123)
    save_vq(VQModel(VQConfig.from_name("shapes-32", channels=16, codebook_size=64)), other)
    shutil.copyfile(model_assets.vq / "config.json", other / "config.json")
    before = digest(run)
    res = subprocess.run([*cmd, f"--data.vq={other}"], cwd=REPO, capture_output=True, text=True)
    clean_error(res, "encoded by another VQ than", str(other), "--overwrite")
    assert digest(run) == before


def test_resuming_with_another_vocabulary(trained, model_assets, tmp_path):
    from omni.tokenizers.text import TextTokenizer, train_bpe

    cmd, run, _ = trained
    other = tmp_path / "tokenizer.json"
    TextTokenizer(train_bpe(["a red circle", "a blue square"] * 50, vocab_size=280)).save(other)
    before = digest(run / "checkpoints")
    res = subprocess.run(
        [*cmd, f"--data.tokenizer={other}", "--trainer.max_steps=20", "--ckpt_path=last"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    clean_error(res, "another vocabulary", "resume with the tokenizer.json")
    assert digest(run / "checkpoints") == before


def test_a_nan_in_the_loss_stops_without_losing_the_checkpoint(trained):
    cmd, run, _ = trained
    before = digest(run / "checkpoints") | digest(run / "model")
    # A learning rate of 1e30 turns the weights to inf after one step: the next loss is NaN.
    res = subprocess.run(
        [*cmd, "--model.lr=1e30", "--trainer.max_steps=20", "--ckpt_path=last"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    clean_error(res, "training loss is nan at step", "lower the learning rate", "--ckpt_path last")
    assert digest(run / "checkpoints") | digest(run / "model") == before


@pytest.mark.parametrize(
    "flag, phrase",
    [("--model.n_experts=8", "n_experts"), ("--model.lr=fast", "model.lr")],
    ids=["unknown key", "wrong type"],
)
def test_a_bad_training_config(model_assets, tmp_path, flag, phrase):
    res = subprocess.run(
        tiny_train_command(model_assets, tmp_path / "run", flag), cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert phrase in res.stderr


# ----------------------------------------------------------------------------------------------
# Release folders and inputs through sample.py


@pytest.fixture
def release(tiny_releases, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_releases["ar"], folder)
    return folder


def sample_run(capsys, *argv) -> tuple[int, str]:
    code = omni(["sample", *(str(a) for a in argv)])
    return code, capsys.readouterr().err


def test_a_truncated_model_safetensors(release, tmp_path, capsys):
    weights = release / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle")
    assert code == 2 and str(weights) in err and "truncated" in err and "re-export" in err


def test_a_vq_folder_whose_codebook_disagrees_with_the_model(release, tmp_path, capsys):
    from omni.tokenizers import VQConfig, VQModel, save_vq

    shutil.rmtree(release / "vq")
    save_vq(VQModel(VQConfig.from_name("shapes-32", channels=16, codebook_size=128)), release / "vq")
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle")
    assert code == 2 and "has 128 codes" in err and "laid out for 64" in err


@pytest.mark.parametrize(
    "change, phrase",
    [
        ({"n_experts": 8}, "unknown model config keys ['n_experts']"),
        ({"dim": "64"}, "model.dim should be int"),
    ],
    ids=["unknown key", "wrong type"],
)
def test_a_bad_release_config(release, tmp_path, capsys, change, phrase):
    path = release / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "model": {**config["model"], **change}}))
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle")
    assert code == 2 and str(path) in err and phrase in err


def test_a_missing_model_folder(tmp_path, capsys):
    code, err = sample_run(capsys, "t2i", "--model", tmp_path / "nowhere", "--out", tmp_path / "o", "x")
    assert code == 2 and "nowhere" in err and "does not exist" in err


def test_odd_images_are_captioned(release, tmp_path, capsys):
    paths = []
    for name in ODD:
        paths.append(tmp_path / f"{name}.png")
        odd_images()[name].save(paths[-1])
    code, _ = sample_run(capsys, "caption", "--model", release, "--out", tmp_path / "o", *paths)
    assert code == 0
    items = json.loads((tmp_path / "o" / "results.json").read_text())["items"]
    assert len(items) == len(ODD) and all(isinstance(i["caption"], str) for i in items)


def test_an_undecodable_image_file(release, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    code, err = sample_run(capsys, "caption", "--model", release, "--out", tmp_path / "o", broken)
    assert code == 2 and "broken.png" in err and "cannot be read as an image" in err


def test_an_over_long_prompt_is_cut_with_a_warning(release, tmp_path, capsys, caplog):
    code, _ = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle " * 200)
    assert code == 0 and "cut to the model's budget" in caplog.text
    assert Image.open(tmp_path / "o" / "0000.png").size == (32, 32)


def test_an_inpaint_region_outside_the_image(release, tmp_path, capsys):
    source = tmp_path / "src.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(source)
    argv = ["inpaint", "--model", release, "--out", tmp_path / "o", source, "--box", 40, 40, 50, 50]
    code, err = sample_run(capsys, *argv)
    assert code == 2 and "outside the 32x32 image" in err


def test_an_empty_prompt_generates_unconditionally(release, tmp_path, capsys):
    # Documented behaviour (Pipeline.generate_images): "" is the unconditional prompt of guidance.
    code, _ = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "")
    assert code == 0 and Image.open(tmp_path / "o" / "0000.png").size == (32, 32)


# ----------------------------------------------------------------------------------------------
# Never destroy what a user has: outputs only ever replace folders Omni wrote for the same run


def own_folders(cmd, out) -> list[str]:
    """`cmd` with its own checkpoint and log folders under `out` (so only the export folder is at stake)."""
    return [
        *cmd,
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.callbacks.init_args.dirpath={out}/checkpoints",
    ]


def test_an_export_folder_that_omni_did_not_write_is_never_replaced(trained, model_assets, tmp_path):
    cmd, run, _ = trained
    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.txt").write_text("years of work")
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    (tmp_path / "fresh" / "checkpoints" / "notes.txt").write_text("mine")
    before = {p: digest(p) for p in (documents, model_assets.vq, run)}
    base = own_folders(cmd, tmp_path / "fresh")
    cases = [
        (documents, "was not written by Omni"),
        (tmp_path / "fresh" / "checkpoints", "is or contains the checkpoint folder"),
        (model_assets.vq, "is or contains data.vq"),
        (model_assets.root, "is or contains data.vq"),  # a folder that holds the VQ
    ]
    for export, phrase in cases:
        res = subprocess.run(
            [*base, f"--model.export_dir={export}"], cwd=REPO, capture_output=True, text=True
        )
        clean_error(res, phrase, str(export))
    assert {p: digest(p) for p in before} == before


def test_a_new_run_never_takes_over_a_trained_release(trained, tmp_path):
    cmd, run, _ = trained
    before = digest(run)
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)  # the same command, no --ckpt_path
    clean_error(again, "already holds last.ckpt", "--ckpt_path last")
    other = subprocess.run(own_folders(cmd, tmp_path / "other"), cwd=REPO, capture_output=True, text=True)
    clean_error(other, "holds the release of another run (10 steps)", str(run / "model"))
    after = digest(run)  # (Lightning's config saver may have opened a new logs/version_N: harmless)
    assert {k: after.get(k) for k in before} == before and not list((tmp_path / "other").rglob("*.ckpt"))


def test_encoding_into_the_input_folder_or_from_two_folders_of_one_name(model_assets, shapes_dir, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(shapes_dir, images)
    (tmp_path / "b").mkdir()
    shutil.copy(shapes_dir / "val-000000.tar", tmp_path / "b" / "val-000000.tar")
    before = digest(images)

    def encode(shards, out, *extra):
        return subprocess.run(
            [sys.executable, "tokenizers/encode_shards.py", "--vq", str(model_assets.vq)]
            + ["--shards", shards, "--out", str(out), *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
        )

    for extra in ([], ["--overwrite"]):
        clean_error(encode(f"{images}/*.tar", images, *extra), "holds the input shards", str(images))
    clean_error(
        encode(f"{images}/val-*.tar::{tmp_path}/b/*.tar", tmp_path / "codes"),
        "2 input shards share the name val-000000.tar",
    )
    clean_error(encode(f"{images}/*.tar", images / "info.json"), "is a file")
    assert digest(images) == before and not (tmp_path / "codes").exists()


def test_two_encoding_runs_into_one_folder(model_assets, shapes_dir, tmp_path):
    """The second run stops at once with a clear line; the first keeps its folder to itself."""
    from filelock import FileLock

    out = tmp_path / "codes"
    out.mkdir()
    with FileLock(str(out / ".encode_shards.lock")):  # as a running encode_shards.py holds it
        res = subprocess.run(
            [sys.executable, "tokenizers/encode_shards.py", "--vq", str(model_assets.vq)]
            + ["--shards", f"{shapes_dir}/val-*.tar", "--out", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
    clean_error(res, "another encode_shards.py is writing into", str(out))
    assert not list(out.glob("*.tar"))


def test_ctrl_c_during_a_release_swap_finishes_the_swap_first(model_assets, monkeypatch, tmp_path):
    """An interrupt between the two renames used to leave no release (or half of the old one)."""
    import os
    import signal

    import omni.release
    from omni.checkpoint import load_model, save_pretrained

    model, assets = tiny_model(model_assets)
    args = (model.config, assets)
    folder = save_pretrained(tmp_path / "model", model.state_dict(), *args, run="r1")
    real_rename = os.rename

    def rename_then_interrupt(src, dst):
        real_rename(src, dst)
        if str(dst).endswith(".model.old"):
            # Ctrl-C right after the old release moved away. raise_signal delivers it to this
            # thread at once; os.kill may hand it to another of the process's threads (torch's),
            # which made the test flaky.
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(omni.release.os, "rename", rename_then_interrupt)
    newer = {k: v + 1 for k, v in model.state_dict().items()}
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(folder, newer, *args, run="r1")
    monkeypatch.undo()
    assert not (tmp_path / ".model.old").exists()
    loaded = load_model(folder).state_dict()
    assert all(torch_equal(loaded[k], newer[k]) for k in newer)  # the whole new release, nothing half


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_a_release_is_never_ahead_of_its_checkpoint(model_assets, monkeypatch, tmp_path):
    """Exported after the step's checkpoint is on disk: a kill between the two cannot leave the
    release one step ahead of last.ckpt."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    import omni.training.module
    from omni.model import Architecture
    from omni.training.datamodule import OmniDataModule
    from omni.training.module import OmniLitModule

    data = OmniDataModule(
        train_shards=str(model_assets.codes / "train-*.tar"),
        tokenizer=str(model_assets.tokenizer),
        vq=str(model_assets.vq),
        seq_len=128,
        batch_size=2,
        batches_per_epoch=100,
    )
    lit = OmniLitModule(
        Architecture.from_name("tiny", max_seq_len=128),
        assets=data.assets,
        export_dir=str(tmp_path / "model"),
    )
    checkpoints = tmp_path / "checkpoints"
    seen = []
    real_save = omni.training.module.save_pretrained

    def checking_save(folder, *args, extra=None, **kwargs):
        step = extra["trained_steps"]
        seen.append((step, (checkpoints / f"epoch=0-step={step}.ckpt").is_file()))
        return real_save(folder, *args, extra=extra, **kwargs)

    monkeypatch.setattr(omni.training.module, "save_pretrained", checking_save)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=5,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=2, save_top_k=-1)],
    )
    trainer.fit(lit, data)
    assert seen[:2] == [(2, True), (4, True)]  # each export found its step's checkpoint written
    assert seen[-1][0] == 5  # and the end of training exports the final weights


@pytest.mark.parametrize("entry", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/x.safetensors"])
def test_an_index_naming_files_outside_the_release(model_assets, tmp_path, entry):
    """A downloaded release must not read (or reveal) other files on the machine."""
    import torch

    from omni.checkpoint import INDEX, ModelFolderError, load_model, save_pretrained

    model, assets = tiny_model(model_assets)
    folder = save_pretrained(
        tmp_path / "model",
        model.state_dict(),
        model.config,
        assets,
        max_shard_bytes=100_000,
    )
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))  # it exists: still refused
    index = json.loads((folder / INDEX).read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = entry
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="not a file name inside") as e:
        load_model(folder)
    assert "not found" not in str(e.value) and "unreadable" not in str(e.value)


def test_a_release_whose_tokenizer_is_another_of_the_same_size(release, tmp_path, capsys):
    path = release / "tokenizer.json"
    spec = json.loads(path.read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[-2:]  # two merged tokens swap ids: same size, other meaning
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(spec))
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle")
    assert code == 2 and f"{path} is not the tokenizer the model was trained with" in err


def test_a_release_whose_vq_has_the_same_config_but_other_weights(release, tmp_path, capsys):
    import torch

    from omni.tokenizers import load_vq, save_vq

    vq = load_vq(release / "vq")
    with torch.no_grad():
        vq.quantizer.codebook.add_(0.1)
    shutil.rmtree(release / "vq")
    save_vq(vq, release / "vq")
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle")
    assert code == 2 and f"{release / 'vq'} is not the vq the model was trained with" in err


def test_a_release_whose_vq_has_the_same_grid_at_another_resolution(release, tmp_path, capsys):
    """A 64 px VQ with 8 px patches has the 8x8 grid too, but codes of 192 RGB values, not 48."""
    from omni.tokenizers import VQConfig, VQModel, load_vq, save_vq

    old = load_vq(release / "vq").config
    shutil.rmtree(release / "vq")
    save_vq(
        VQModel(VQConfig.from_name("shapes-32", resolution=64, downsample=8, channels=16, codebook_size=64)),
        release / "vq",
    )
    config = json.loads((release / "config.json").read_text())
    del config["assets"]  # as a release written before fingerprints were recorded
    (release / "config.json").write_text(json.dumps(config))
    assert old.grid == load_vq(release / "vq").config.grid
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle")
    assert code == 2 and "model.image_features 48 disagrees" in err and "need 192" in err


# ----------------------------------------------------------------------------------------------
# Values that make no sense: one line naming the option, never a traceback or a silent result


@pytest.mark.parametrize(
    "change, phrase",
    [
        ({"n_heads": 0}, "n_heads must be >= 1"),
        ({"rope_base": 0.0}, "rope_base must be > 1.0"),
        ({"norm_eps": -1.0}, "norm_eps must be > 0.0"),
    ],
    ids=["n_heads 0", "rope_base 0", "norm_eps -1"],
)
def test_a_nonsensical_release_config(release, tmp_path, capsys, change, phrase):
    path = release / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "model": {**config["model"], **change}}))
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle")
    assert code == 2 and str(path) in err and phrase in err


@pytest.mark.parametrize(
    "edit, phrase",
    [
        (
            lambda c: c | {"generation": {**c["generation"], "temperature": None}},
            "generation.temperature must be",
        ),
        (lambda c: c | {"vocab": {**c["vocab"], "special_ids": {"pad": "abc"}}}, "special_ids must map"),
        (lambda c: c | {"format_version": 999}, "format_version 999 is not one this Omni reads"),
    ],
    ids=["temperature null", "special id abc", "format_version 999"],
)
def test_a_release_config_with_odd_sections(release, tmp_path, capsys, edit, phrase):
    path = release / "config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle")
    assert code == 2 and phrase in err


def test_a_vq_folder_of_a_newer_format(release, tmp_path, capsys):
    path = release / "vq" / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"format_version": 7}))
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle")
    assert code == 2 and str(path) in err and "format_version 7 is not one this Omni reads" in err


def test_a_deeply_nested_release_config(release, tmp_path, capsys):
    (release / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle")
    assert code == 2 and "is not valid JSON" in err


@pytest.mark.parametrize("damage", ["nan", "int32"])
def test_damaged_weights(release, tmp_path, capsys, damage):
    import torch
    from safetensors.torch import load_file, save_file

    path = release / "model.safetensors"
    state = load_file(str(path))
    name = next(k for k in state if k.endswith("norm.weight"))
    state[name] = state[name].clone().fill_(float("nan")) if damage == "nan" else state[name].to(torch.int32)
    save_file(state, str(path))
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "o", "a red circle")
    assert code == 2 and name in err
    assert ("NaN or inf" in err) if damage == "nan" else ("torch.int32, not a floating-point" in err)


@pytest.mark.parametrize(
    "flag, value, phrase",
    [
        ("--guidance", "nan", "must be a finite number"),
        ("--guidance", "inf", "must be a finite number"),
        ("--temperature", "nan", "must be a finite number"),
        ("--scale", "100000", "must be >= 1 and <= 32"),
    ],
)
def test_nonsensical_sampling_flags(release, tmp_path, capsys, flag, value, phrase):
    with pytest.raises(SystemExit) as e:
        omni(["sample", "t2i", "--model", str(release), "--out", str(tmp_path / "o"), flag, value, "x"])
    assert e.value.code == 2 and phrase in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_nonsensical_sampling_values_in_python(release):
    import omni

    pipe = omni.load_pretrained(release)
    for options in ({"guidance": float("nan")}, {"temperature": float("inf")}, {"guidance": -1.0}):
        with pytest.raises(ValueError, match="must be"):
            pipe.generate_images(["a red circle"], **options)


@pytest.mark.parametrize(
    "device, phrase", [("bogus", "unknown device 'bogus'"), ("cuda", "no CUDA device is usable here")]
)
def test_a_device_that_is_not_there(release, tmp_path, capsys, device, phrase):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    code, err = sample_run(
        capsys, "t2i", "--model", release, "--out", tmp_path / "o", "--device", device, "x"
    )
    assert code == 2 and phrase in err and "vq" not in err


def test_an_image_that_is_a_folder_or_a_decompression_bomb(release, tmp_path, capsys, monkeypatch):
    (tmp_path / "folder.png").mkdir()
    code, err = sample_run(
        capsys, "caption", "--model", release, "--out", tmp_path / "o", tmp_path / "folder.png"
    )
    assert code == 2 and "a folder, not an image file" in err
    Image.new("RGB", (100, 100)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels > 2x the limit: a "bomb"
    code, err = sample_run(
        capsys, "caption", "--model", release, "--out", tmp_path / "o", tmp_path / "huge.png"
    )
    assert code == 2 and "huge.png" in err and "too large to decode safely" in err


def test_sample_outputs_replace_their_own_folder_whole_and_refuse_others(release, tmp_path, capsys):
    out = tmp_path / "o"
    assert sample_run(capsys, "t2i", "--model", release, "--out", out, "--per-prompt", "3", "a", "b")[0] == 0
    assert len(list(out.glob("0*.png"))) == 6
    assert sample_run(capsys, "t2i", "--model", release, "--out", out, "a red circle")[0] == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0000.png", "grid.png"]  # no stale images
    assert len(json.loads((out / "results.json").read_text())["items"]) == 1
    mine = tmp_path / "holiday"
    mine.mkdir()
    Image.new("RGB", (8, 8)).save(mine / "0000.png")
    before = digest(mine)
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", mine, "a red circle")
    assert code == 2 and "was not written by Omni" in err and digest(mine) == before
    (tmp_path / "file").write_text("x")
    code, err = sample_run(capsys, "t2i", "--model", release, "--out", tmp_path / "file", "a red circle")
    assert code == 2 and "is not a folder" in err


@pytest.mark.parametrize(
    "flag, phrase",
    [
        ("--data.batch_size=0", "data.batch_size must be >= 1"),
        ("--data.batch_size=-1", "data.batch_size must be >= 1"),
        ("--model.lr=-1", "model.lr must be > 0.0"),
    ],
)
def test_nonsensical_training_options(model_assets, tmp_path, flag, phrase):
    res = subprocess.run(
        tiny_train_command(model_assets, tmp_path / "run", flag), cwd=REPO, capture_output=True, text=True
    )
    clean_error(res, phrase)
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_resuming_a_checkpoint_of_another_architecture(trained):
    cmd, run, _ = trained
    before = digest(run / "checkpoints") | digest(run / "model")
    res = subprocess.run(
        [*cmd, "--model.transformer.dim=32", "--model.transformer.n_heads=2", "--ckpt_path=last"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    clean_error(res, "the checkpoint holds another architecture", "resume with the config")
    assert digest(run / "checkpoints") | digest(run / "model") == before


def test_code_shards_of_a_smaller_codebook_without_codes_info(model_assets, tmp_path):
    """A 16-code VQ on 64-code shards without codes_info.json: the first code out of range stops
    the run (it used to skip those samples and train on the rest, whose codes mean other pictures)."""
    from omni.tokenizers import VQConfig, VQModel, save_vq

    codes = tmp_path / "codes"
    codes.mkdir()
    for shard in model_assets.codes.glob("*.tar"):
        shutil.copy(shard, codes / shard.name)  # without codes_info.json: nothing to check against
    save_vq(VQModel(VQConfig.from_name("shapes-32", channels=16, codebook_size=16)), tmp_path / "vq16")
    cmd = tiny_train_command(
        model_assets,
        tmp_path / "run",
        f"--data.train_shards={codes}/train-*.tar",
        f"--data.val_shards={codes}/val-*.tar",
        f"--data.vq={tmp_path / 'vq16'}",
        "--trainer.max_steps=5",
    )
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    clean_error(res, "but data.vq has 16 codes", "another VQ encoded these shards")


def test_data_of_which_no_sample_can_be_used(model_assets, tmp_path):
    """Every document longer than the rows: the endless stream used to spin (only kill -9 stopped it)."""
    cmd = tiny_train_command(
        model_assets,
        tmp_path / "run",
        "--data.seq_len=16",  # a t2i document is a caption and 64 codes: it never fits
        "--data.ratios={t2i: 1.0}",
        "--data.val_shards=null",
        "--trainer.max_steps=5",
    )
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    clean_error(res, "samples were all unusable", "over-long document", "data.seq_len")


def test_a_brace_range_with_missing_shards(model_assets, shapes_dir, tmp_path):
    pattern = f"{shapes_dir}/train-{{000000..000005}}.tar"  # 0-2 exist, 3-5 do not
    res = subprocess.run(
        [sys.executable, "tokenizers/encode_shards.py", "--vq", str(model_assets.vq)]
        + ["--shards", pattern, "--out", str(tmp_path / "codes")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "3 of the shards" in res.stderr and "train-000003.tar" in res.stderr
    assert not (tmp_path / "codes").exists()


def test_a_text_tokenizer_from_shards_without_text_or_into_a_folder(tmp_path):
    with wds.TarWriter(str(tmp_path / "images-000000.tar")) as sink:
        sink.write({"__key__": "a", "png": png_bytes(Image.new("RGB", (8, 8)))})
    base = [sys.executable, "tokenizers/train_text.py", "--shards", str(tmp_path / "images-*.tar")]
    res = subprocess.run(
        [*base, "--out", str(tmp_path / "tok.json")], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 2 and "hold no text" in res.stderr and not (tmp_path / "tok.json").exists()
    res = subprocess.run([*base, "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "is a folder" in res.stderr


def test_a_release_left_aside_by_a_killed_save_is_never_deleted(model_assets, tmp_path):
    """kill -9 between the swap's two renames leaves the only copy in .NAME.old: the next save
    must not delete it (it used to, unchecked)."""
    from omni.checkpoint import save_pretrained
    from omni.release import FolderGuardError

    model, assets = tiny_model(model_assets)
    args = (model.state_dict(), model.config, assets)
    folder = save_pretrained(tmp_path / "model", *args, run="r1")
    folder.rename(tmp_path / ".model.old")  # where the kill left it
    before = digest(tmp_path / ".model.old")
    with pytest.raises(
        FolderGuardError, match=r"\.model\.old holds the release an interrupted save moved away"
    ):
        save_pretrained(folder, *args, run="r2")
    assert digest(tmp_path / ".model.old") == before and not folder.exists()


def test_sampling_into_the_folder_that_holds_its_input(release, tmp_path, capsys):
    out = tmp_path / "o"
    assert sample_run(capsys, "t2i", "--model", release, "--out", out, "a red circle")[0] == 0
    code, err = sample_run(capsys, "caption", "--model", release, "--out", out, out / "0000.png")
    assert code == 2 and "holds the input" in err and (out / "0000.png").is_file()


def test_resuming_a_run_from_before_run_ids_keeps_its_release(tmp_path):
    """A checkpoint written before run ids, and its unmarked release: the resumed run adopts it
    (a fresh run is still refused)."""
    from types import SimpleNamespace

    from omni.release import MARKER, FolderGuardError, RunOutputs, read_marker

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format": "omni-model"}))
    trainer = SimpleNamespace(
        ckpt_path=None,
        checkpoint_callback=None,
        is_global_zero=True,
        strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
    )
    fresh = RunOutputs(str(folder), "model")
    with pytest.raises(FolderGuardError, match="was not written by Omni"):
        fresh.check_at_start(trainer, {})
    resumed = RunOutputs(str(folder), "model")
    resumed.load({"state_dict": {}})  # no omni_run in it
    resumed.check_at_start(SimpleNamespace(**{**vars(trainer), "ckpt_path": "last.ckpt"}), {})
    assert read_marker(folder)["run"] == resumed.run and (folder / MARKER).is_file()
