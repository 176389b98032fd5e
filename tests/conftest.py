"""Shared fixtures; tests marked `cuda` are skipped without a CUDA device."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """Count the bad-input catalogue (tests/test_bad_inputs.py): one test per fault."""
    results = {
        outcome: [r for r in terminalreporter.stats.get(outcome, []) if "test_bad_inputs.py" in r.nodeid]
        for outcome in ("passed", "failed", "error", "skipped")
    }
    tried = sum(len(r) for r in results.values())
    if tried:
        terminalreporter.write_line(
            f"bad-input catalogue: {tried} faults tried, {len(results['passed'])} handled as specified"
        )


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A small shapes dataset at 32 px: 3 train shards of 100, 1 val shard of 50."""
    from omni.data.shapes import build

    out = tmp_path_factory.mktemp("shapes")
    build(out, train=300, val=50, size=32, seed=0, per_shard=100, progress=False)
    return out


@pytest.fixture(scope="session")
def model_assets(shapes_dir, tmp_path_factory):
    """What model training reads: a BPE tokenizer.json, a (small, untrained) VQ folder and code
    shards of `shapes_dir` encoded with it (train-00000{0,1,2}.tar, val-000000.tar)."""
    from types import SimpleNamespace

    import webdataset as wds

    from omni.tokenizers import VQConfig, VQModel, save_vq
    from omni.tokenizers.codes import encode_shard, record_encoded_shard
    from omni.tokenizers.export import vq_fingerprint
    from omni.tokenizers.text import TextTokenizer, train_bpe

    out = tmp_path_factory.mktemp("model_assets")
    texts = []
    for shard in sorted(shapes_dir.glob("train-*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False):
            texts.append(sample["txt"].decode())
            texts += [p["question"] + " " + p["answer"] for p in json.loads(sample["json"])["qa"]]
    TextTokenizer(train_bpe(texts, vocab_size=300)).save(out / "tokenizer.json")
    torch.manual_seed(0)
    vq = VQModel(VQConfig.from_name("shapes-32", channels=16, codebook_size=64)).eval()
    save_vq(vq, out / "vq")
    codes = out / "codes"
    codes.mkdir()
    fingerprint = vq_fingerprint(out / "vq")
    for shard in sorted(shapes_dir.glob("*.tar")):
        counts = encode_shard(vq, str(shard), codes / shard.name)
        record_encoded_shard(
            codes, shard.name, vq=out / "vq", fingerprint=fingerprint, source=str(shard), counts=counts
        )
    return SimpleNamespace(root=out, tokenizer=out / "tokenizer.json", vq=out / "vq", codes=codes)


@pytest.fixture(scope="session")
def tiny_releases(model_assets, tmp_path_factory) -> dict[str, Path]:
    """Release folders of an untrained tiny model over `model_assets`, one per image mode."""
    from omni.checkpoint import save_pretrained
    from omni.lit import resolve_image_fields
    from omni.model import ModelConfig, Transformer
    from omni.tokenizers.text import TextTokenizer
    from omni.vocab import Vocab

    root = tmp_path_factory.mktemp("releases")
    vocab = Vocab.build(TextTokenizer.from_file(model_assets.tokenizer), codebook_size=64)
    folders = {}
    for mode in ("mask", "ar"):
        torch.manual_seed(0)
        config = ModelConfig.from_name("tiny", vocab_size=vocab.size, image_generation=mode)
        appearance = None
        if mode == "ar":  # the demo's image fields, taken from the VQ as training does
            config = dataclasses.replace(config, image_positions=-1, image_features=-1)
            config, appearance = resolve_image_fields(config, vocab, str(model_assets.vq))
        model = Transformer(config)
        if appearance is not None:
            model.code_features.copy_(appearance)
            torch.nn.init.normal_(model.code_readout.weight, std=0.02)  # zero at init: make it matter
        generation = {"mask_steps": 3, "max_new_tokens": 6}
        folders[mode] = root / mode
        save_pretrained(
            folders[mode],
            model.state_dict(),
            model.config,
            vocab,
            model_assets.tokenizer,
            model_assets.vq,
            generation,
        )
    return folders


def tiny_train_command(assets, out: Path, *extra: str) -> list[str]:
    """`train.py fit` on the demo config shrunk to a tiny model over `model_assets`, writing under `out`.

    Checkpoints go to out/checkpoints, logs to out/logs, the release to out/model; `extra`
    flags come last and win.
    """
    import sys

    return [
        sys.executable,
        "train.py",
        "fit",
        "--config",
        "configs/shapes/model.yaml",
        f"--data.train_shards={assets.codes}/train-*.tar",
        f"--data.val_shards={assets.codes}/val-*.tar",
        f"--data.tokenizer={assets.tokenizer}",
        f"--data.vq={assets.vq}",
        "--data.seq_len=128",
        "--data.batch_size=4",
        "--data.val_batches=2",
        "--model.transformer.dim=64",
        "--model.transformer.n_heads=4",
        "--model.transformer.n_layers=2",
        "--model.transformer.max_seq_len=128",
        "--model.warmup_steps=5",
        f"--model.export_dir={out}/model",
        "--trainer.max_time=null",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.callbacks.init_args.dirpath={out}/checkpoints",
        *extra,
    ]


def tiny_vq_config(tmp_path: Path, shapes_dir: Path, **data_overrides) -> str:
    """configs/shapes/vq.yaml shrunk to 100 steps of a 64-code VQ on `shapes_dir`, under tmp_path.

    Writes tmp_path/vq.yaml and returns its path; runs go to tmp_path/run, the release to tmp_path/vq.
    """
    import yaml

    cfg = yaml.safe_load((REPO / "configs/shapes/vq.yaml").read_text())
    run = tmp_path / "run"
    cfg["trainer"].update(
        max_time=None,
        max_steps=100,
        val_check_interval=50,
        limit_val_batches=1,
        default_root_dir=str(run),
        enable_progress_bar=False,
    )
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(run)
    cfg["trainer"]["callbacks"][0]["init_args"].update(
        dirpath=str(run / "checkpoints"), every_n_train_steps=50
    )
    cfg["model"]["vq"].update(channels=16, codebook_size=64, restart_every=10)
    cfg["model"].update(export_dir=str(tmp_path / "vq"), warmup_steps=5)
    cfg["data"].update(
        train_shards=str(shapes_dir / "train-*.tar"),
        val_shards=str(shapes_dir / "val-*.tar"),
        batch_size=16,
        batches_per_epoch=20,
        **data_overrides,
    )
    path = tmp_path / "vq.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)
