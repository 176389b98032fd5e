"""Shared fixtures; tests marked `cuda` are skipped without a CUDA device."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A small shapes dataset at 32 px: 3 train shards of 100, 1 val shard of 50."""
    from omni.data.shapes import build

    out = tmp_path_factory.mktemp("shapes")
    build(out, train=300, val=50, size=32, seed=0, per_shard=100, progress=False)
    return out
