"""Reading shards: decoding, skipping and counting bad samples, node/worker splitting, epochs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import good, odd_images, png_bytes, write_shard

from omni.data.loader import count_samples, image_text_loader, text_loader
from omni.data.shards import expand_shards


@pytest.fixture
def messy_shard(tmp_path):
    """A shard of 10 good samples, 7 odd-but-valid images and 6 bad samples, interleaved."""
    samples = [good(i) for i in range(10)]
    for name, img in odd_images().items():
        ext = "jpg" if img.mode == "CMYK" else "png"  # PNG has no CMYK
        data = png_bytes(img, "JPEG" if ext == "jpg" else "PNG")
        samples.append({"__key__": f"odd-{name}", ext: data, "txt": f"an {name} image".encode()})
    png = good(99)["png"]
    samples += [
        {"__key__": "bad-bytes", "png": b"this is not an image", "txt": b"a caption"},
        {"__key__": "bad-truncated-png", "png": png[: len(png) // 3], "txt": b"a caption"},
        {"__key__": "bad-empty-caption", "png": png, "txt": b"   \n"},
        {"__key__": "bad-no-caption", "png": png},
        {"__key__": "bad-no-image", "txt": b"a caption"},
        {"__key__": "bad-json", "png": png, "txt": b"a caption", "json": b"{not json"},
    ]
    samples = [samples[i] for i in np.random.default_rng(0).permutation(len(samples))]
    path = tmp_path / "messy-000000.tar"
    write_shard(path, samples)
    return path


def test_batches_have_images_texts_keys_and_meta(shapes_dir):
    loader = image_text_loader(
        str(shapes_dir / "train-*.tar"), resolution=32, batch_size=16, shuffle_buffer=50
    )
    assert len(loader) == 19  # ceil(300 / 16): one pass per epoch by default
    batches = list(loader)
    assert len(batches) == 19
    b = batches[0]
    assert b["image"].shape == (16, 3, 32, 32) and b["image"].dtype == torch.float32
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0 and b["image"].max() > 0.9
    assert len(b["text"]) == 16 and all(isinstance(t, str) and t for t in b["text"])
    assert "scene" in b["meta"][0] and len(b["key"]) == 16
    assert "skipped" not in b
    # Resizing on the fly: the same shards at 16 px.
    small = next(iter(image_text_loader(str(shapes_dir / "val-*.tar"), resolution=16, batch_size=4)))
    assert small["image"].shape == (4, 3, 16, 16)


def test_bad_samples_are_skipped_and_counted(messy_shard, caplog):
    loader = image_text_loader(str(messy_shard), batch_size=17, shuffle_buffer=0, resampled=False)
    with caplog.at_level(logging.WARNING, logger="omni.data"):
        (batch,) = list(loader)
    assert len(batch["key"]) == 17
    assert sorted(k for k in batch["key"] if k.startswith("odd")) == sorted(f"odd-{n}" for n in odd_images())
    assert not any(k.startswith("bad") for k in batch["key"])
    assert dict(loader.skipped) == {
        "undecodable image": 2,
        "empty caption": 1,
        "missing caption": 1,
        "missing image": 1,
        "unreadable json": 1,
    }
    text = caplog.text
    assert "bad-bytes" in text and str(messy_shard) in text  # the warning names shard and key
    assert "skipped 6 bad samples" in text


def test_odd_image_modes_decode_to_rgb(messy_shard):
    loader = image_text_loader(str(messy_shard), batch_size=17, shuffle_buffer=0, resampled=False)
    batch = next(iter(loader))
    by_key = dict(zip(batch["key"], batch["image"]))
    rgba = by_key["odd-rgba"]
    assert rgba[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]  # transparent -> black background, not red
    assert rgba[:, 16, 16].tolist() == [-1.0, 1.0, -1.0]
    assert torch.allclose(by_key["odd-tiny"][:, 5, 5], torch.tensor([1.0, 1.0, -1.0]))
    assert torch.allclose(by_key["odd-wide"].mean((1, 2)), torch.tensor([-1.0, 1.0, 1.0]), atol=1e-3)
    g16 = by_key["odd-grey16"]
    assert g16.min() > -1.0 + 1e-3 or g16.max() < 1.0  # scaled, not clipped to white
    assert torch.equal(g16[0], g16[1])


@pytest.mark.parametrize("cut_at_block", [False, True])
def test_truncated_tar_keeps_what_was_readable(shapes_dir, tmp_path, caplog, cut_at_block):
    import tarfile

    data = (shapes_dir / "train-000000.tar").read_bytes()
    with tarfile.open(shapes_dir / "train-000000.tar") as tar:
        # the first member past the middle: cut at its header (a block boundary) or inside its data
        member = next(m for m in tar.getmembers() if m.offset >= len(data) // 2 and m.size > 64)
    end = member.offset if cut_at_block else member.offset_data + member.size // 2
    cut = tmp_path / "cut-000000.tar"
    cut.write_bytes(data[:end])
    loader = image_text_loader(str(cut), batch_size=10, shuffle_buffer=0, resampled=False)
    with caplog.at_level(logging.WARNING, logger="omni.data"):
        keys = [k for b in loader for k in b["key"]]
    assert 40 <= len(keys) < 100
    assert loader.skipped["truncated shard"] == 1
    if not cut_at_block:  # a member cut in the middle is also an unreadable read
        assert loader.skipped["unreadable shard data"] == 1
    assert "cut-000000.tar" in caplog.text and "re-create" in caplog.text


def test_pattern_matching_nothing_is_a_clear_error(tmp_path):
    pattern = str(tmp_path / "nope-*.tar")
    with pytest.raises(FileNotFoundError, match="no shards match") as e:
        image_text_loader(pattern)
    assert pattern in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope"):
        text_loader(str(tmp_path / "nope-{000000..000003}.tar"))


def test_brace_ranges_and_lists_expand(shapes_dir):
    assert len(expand_shards(str(shapes_dir / "train-{000000..000002}.tar"))) == 3
    assert len(expand_shards(f"{shapes_dir}/train-000000.tar::{shapes_dir}/val-*.tar")) == 2
    assert count_samples(expand_shards(str(shapes_dir / "*.tar"))) == 350


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("shuffle_buffer", [0, 100])
def test_ranks_see_disjoint_samples_and_equal_batch_counts(
    shapes_dir, monkeypatch, num_workers, shuffle_buffer
):
    # Two ranks over 3 shards of 100: rank 0 owns two shards, rank 1 one. Both must yield the
    # same number of batches (no DDP hang) and never share a sample.
    keys = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = image_text_loader(
            str(shapes_dir / "train-*.tar"),
            batch_size=10,
            num_workers=num_workers,
            shuffle_buffer=shuffle_buffer,
        )
        batches = list(loader)
        assert len(batches) == len(loader) == 15  # ceil(300 / (10 * 2))
        keys[rank] = [k for b in batches for k in b["key"]]
    assert set(keys[0]).isdisjoint(keys[1])
    assert len(keys[0]) == len(keys[1]) == 150
    if shuffle_buffer == 0 and num_workers == 0:
        assert len(set(keys[0])) == 150  # rank 0 reads 150 distinct samples of its 200
        assert len(set(keys[1])) == 100  # rank 1 has only 100 and cycles through them


@pytest.mark.parametrize("num_workers", [0, 2])
def test_fewer_shards_than_slots_still_disjoint(shapes_dir, monkeypatch, num_workers):
    keys = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = image_text_loader(
            str(shapes_dir / "val-*.tar"), batch_size=5, num_workers=num_workers, shuffle_buffer=0
        )
        keys[rank] = {k for b in loader for k in b["key"]}
    assert keys[0].isdisjoint(keys[1])
    if num_workers == 0:  # each rank cycles its own ~25 of the shard's 50 samples
        assert len(keys[0] | keys[1]) >= 40


def test_epochs_reshuffle_and_are_reproducible(shapes_dir):
    def first_keys(epoch):
        loader = image_text_loader(str(shapes_dir / "train-*.tar"), batch_size=20, shuffle_buffer=100, seed=1)
        loader.set_epoch(epoch)
        return next(iter(loader))["key"]

    assert first_keys(0) == first_keys(0)
    assert first_keys(0) != first_keys(1)
    loader = image_text_loader(str(shapes_dir / "train-*.tar"), batch_size=100, batches_per_epoch=1)
    a, b = (next(iter(loader))["key"] for _ in range(2))  # the loader advances its epoch itself
    assert a != b and loader.epoch == 2


def test_text_loader_reads_only_captions(shapes_dir, messy_shard):
    loader = text_loader(str(shapes_dir / "val-*.tar"), batch_size=25)
    batches = list(loader)
    assert len(batches) == 2 and set(batches[0]) == {"text", "key"}
    assert all(isinstance(t, str) and t for b in batches for t in b["text"])
    messy = text_loader(str(messy_shard), batch_size=100, shuffle_buffer=0, resampled=False)
    (batch,) = list(messy)
    assert "bad-bytes" in batch["key"]  # image bytes are not read, so not judged
    # 23 samples: the one without a .txt is no text sample at all, the empty caption is skipped.
    assert len(batch["key"]) == 21
    assert dict(messy.skipped) == {"empty caption": 1}
