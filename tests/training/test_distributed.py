"""Lightning DDP on the CPU (gloo, 2 processes) through train.py: no hang on uneven shards,
disjoint samples per rank, and a checkpoint that loads and resumes in a single process."""

from __future__ import annotations

import subprocess
from collections import defaultdict

import pytest
from conftest import REPO, tiny_train_command


def copy_shard(src, dst, n: int) -> None:
    """The first n samples of a code shard."""
    import webdataset as wds

    with wds.TarWriter(str(dst)) as out:
        for i, sample in enumerate(wds.WebDataset(str(src), shardshuffle=False)):
            if i == n:
                break
            out.write({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"})


def read_keys(folder) -> dict[int, dict[int, set[str]]]:
    """rank -> epoch -> keys trained on (from omni.training.sample_log.SampleKeyLog's files)."""
    seen: dict[int, dict[int, set[str]]] = {}
    for path in sorted(folder.glob("rank-*.tsv")):
        per_epoch = defaultdict(set)
        for line in path.read_text().splitlines():
            epoch, _, key = line.split("\t")
            per_epoch[int(epoch)].add(key)
        seen[int(path.stem.split("-")[1])] = per_epoch
    return seen


@pytest.mark.slow
def test_ddp_two_processes_on_uneven_shards(model_assets, tmp_path):
    import omni

    # Two shards of 100 and 25 samples: each rank reads one, so rank 1 runs out 4x sooner and
    # must cycle its shard rather than stop (a rank that stops early hangs the other in all-reduce).
    shards = tmp_path / "codes"
    shards.mkdir()
    copy_shard(model_assets.codes / "train-000000.tar", shards / "train-000000.tar", 100)
    copy_shard(model_assets.codes / "train-000001.tar", shards / "train-000001.tar", 25)
    run, keys = tmp_path / "run", tmp_path / "keys"
    cmd = tiny_train_command(
        model_assets,
        run,
        f"--data.train_shards={shards}/train-*.tar",
        "--data.batches_per_epoch=10",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_steps=30",
        "--trainer.val_check_interval=10",
        "--trainer.log_every_n_steps=5",
        "--trainer.callbacks.init_args.every_n_train_steps=15",
        "--trainer.callbacks+=omni.training.sample_log.SampleKeyLog",
        f"--trainer.callbacks.folder={keys}",
    )
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=420)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = read_keys(keys)
    assert sorted(seen) == [0, 1]
    assert sorted(seen[0]) == sorted(seen[1]) == [0, 1, 2]  # 30 steps of 10-batch epochs, on both ranks
    for epoch in range(3):
        assert seen[0][epoch] and seen[1][epoch]
        assert not seen[0][epoch] & seen[1][epoch], f"epoch {epoch}: ranks shared samples"
    # Rank 1 cycled its 25-sample shard; between them the ranks read both shards.
    all_keys = set().union(*seen[0].values(), *seen[1].values())
    assert len(set().union(*seen[1].values())) <= 25 < len(all_keys)
    # The checkpoint written under DDP loads in a single process: as a release, and to resume.
    pipe = omni.load_pretrained(run / "model")
    assert pipe.model.config.dim == 64
    resumed = tiny_train_command(
        model_assets,
        run,
        f"--data.train_shards={shards}/train-*.tar",
        "--data.batches_per_epoch=10",
        "--trainer.max_steps=35",
        "--trainer.val_check_interval=10",
        "--trainer.log_every_n_steps=1",
        "--trainer.callbacks.init_args.every_n_train_steps=15",
        "--ckpt_path=last",
    )
    res = subprocess.run(resumed, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    assert json.loads((run / "model" / "config.json").read_text())["trained_steps"] == 35
    # It resumed (a missing checkpoint would only warn and start again from step 0).
    import csv

    with open(run / "logs" / "version_1" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("lr")]
    assert min(steps) == 30 and max(steps) == 34
