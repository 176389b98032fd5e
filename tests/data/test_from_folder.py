"""omni data from-folder: captioned images (folder, CSV, JSONL) -> shards the loaders read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omni.data.from_folder import main as from_folder_main
from omni.data.from_folder import write_shards
from omni.data.images import load_rgb, to_tensor
from omni.data.loader import IMAGE_EXTENSIONS, image_text_loader
from omni.data.shards import iterate_samples
from omni.errors import run_command


def make_image(path: Path, seed: int, size: int = 8, fmt: str | None = None) -> Path:
    """A small image of random pixels (so a mix-up of two images cannot pass for equal)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def captioned(folder: Path, rel: str, caption: str, seed: int) -> Path:
    path = make_image(folder / rel, seed)
    path.with_suffix(".txt").write_text(caption)
    return path


def by_source(pattern: str) -> dict[str, dict]:
    """The raw samples of the shards, keyed by the source path recorded in KEY.json."""
    return {json.loads(s["json"])["source"]: s for s in iterate_samples(pattern)}


def pixels(data: bytes | Path) -> np.ndarray:
    return np.asarray(load_rgb(data))


def image_of(sample: dict) -> bytes:
    return next(sample[e] for e in IMAGE_EXTENSIONS if e in sample)


def test_folder_round_trip_keeps_captions_pixels_and_bytes(tmp_path):
    src, out = tmp_path / "photos", tmp_path / "shards"
    files = {
        "red.png": captioned(src, "red.png", "a red thing", 1),
        "deep/blue.jpg": captioned(src, "deep/blue.jpg", "  a blue thing\n", 2),
        "deep/anim.gif": captioned(src, "deep/anim.gif", "a gif", 3),
    }
    (src / "notes.md").write_text("not data")
    (src / "._red.png").write_bytes(b"macOS resource fork, not an image")  # hidden: ignored

    info = write_shards(src, out, shard_size=2)

    assert info["counts"] == {"train": 3, "val": 0}
    assert info["shards"] == {"train": ["train-000000.tar", "train-000001.tar"], "val": []}
    assert info["skipped"] == {} and info["val_pattern"] is None
    assert json.loads((out / "info.json").read_text()) == info
    # Only complete shards and info.json: no temporary files left behind.
    assert sorted(p.name for p in out.iterdir()) == ["info.json", "train-000000.tar", "train-000001.tar"]

    samples = by_source(str(out / "train-*.tar"))
    assert set(samples) == set(files)
    assert samples["red.png"]["txt"] == b"a red thing"
    assert samples["deep/blue.jpg"]["txt"] == b"a blue thing"  # stripped
    # Formats the loader reads keep their bytes and extension; others become PNG.
    assert samples["red.png"]["png"] == files["red.png"].read_bytes()
    assert samples["deep/blue.jpg"]["jpg"] == files["deep/blue.jpg"].read_bytes()
    assert "gif" not in samples["deep/anim.gif"]
    for rel, path in files.items():
        np.testing.assert_array_equal(pixels(image_of(samples[rel])), pixels(path))
    keys = sorted(s["__key__"] for s in samples.values())
    assert keys == ["000000000", "000000001", "000000002"]  # the sorted listing's positions

    # The project's loader reads them as it reads the shapes shards.
    loader = image_text_loader(
        str(out / "train-*.tar"), resolution=8, batch_size=3, resampled=False, shuffle_buffer=1
    )
    (batch,) = list(loader)
    assert loader.skipped == {}
    expected = {"a red thing": "red.png", "a blue thing": "deep/blue.jpg", "a gif": "deep/anim.gif"}
    assert sorted(batch["text"]) == sorted(expected)
    for text, image, meta in zip(batch["text"], batch["image"], batch["meta"], strict=True):
        assert meta == {"source": expected[text]}
        assert (image == to_tensor(load_rgb(files[expected[text]]), 8)).all()


def test_csv_paths_resolve_against_the_csv_folder(tmp_path, monkeypatch):
    lists = tmp_path / "lists"
    a = make_image(lists / "imgs" / "a.png", 10)
    b = make_image(tmp_path / "elsewhere" / "b.webp", 11, fmt="WEBP")
    (lists / "data.csv").write_text(
        "\ufeffImage,Text,extra\n"  # a spreadsheet's byte-order mark and capitalised header
        f'imgs/a.png,"a, with comma",x\n{b},absolute path,y\n'
    )
    monkeypatch.chdir(tmp_path)  # relative paths must not be read against the working directory

    info = write_shards(lists / "data.csv", tmp_path / "out")

    assert info["counts"]["train"] == 2
    samples = by_source(str(tmp_path / "out" / "train-*.tar"))
    assert samples["imgs/a.png"]["txt"] == b"a, with comma"
    assert samples[str(b)]["txt"] == b"absolute path"
    assert samples[str(b)]["webp"] == b.read_bytes()
    np.testing.assert_array_equal(pixels(samples["imgs/a.png"]["png"]), pixels(a))


def test_jsonl_source(tmp_path):
    make_image(tmp_path / "set" / "x.png", 20)
    make_image(tmp_path / "set" / "y.bmp", 21)
    lines = [
        json.dumps({"path": "x.png", "caption": "ex"}),
        "",
        json.dumps({"image": "y.bmp", "caption": "why"}),  # a later object's other key name is missing
        json.dumps({"path": "y.bmp", "caption": "why"}),
        "{not json",
    ]
    (tmp_path / "set" / "list.jsonl").write_text("\n".join(lines) + "\n")

    info = write_shards(tmp_path / "set" / "list.jsonl", tmp_path / "out")

    samples = by_source(str(tmp_path / "out" / "train-*.tar"))
    assert {k: v["txt"] for k, v in samples.items()} == {"x.png": b"ex", "y.bmp": b"why"}
    assert "bmp" in samples["y.bmp"]
    assert info["skipped"] == {"missing file": 1, "unreadable line": 1}


def test_bad_items_are_skipped_counted_and_named(tmp_path, capsys):
    src = tmp_path / "src"
    captioned(src, "good.png", "fine", 1)
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (src / "corrupt.txt").write_text("a caption for a broken image")
    truncated = make_image(tmp_path / "full.png", 2, size=64)
    (src / "truncated.png").write_bytes(truncated.read_bytes()[:200])
    (src / "truncated.txt").write_text("cut short")
    make_image(src / "nocaption.png", 3)
    make_image(src / "blank.png", 4)
    (src / "blank.txt").write_text("  \n")
    make_image(src / "latin1.png", 5)
    (src / "latin1.txt").write_bytes(b"caf\xe9")  # not UTF-8
    (src / "photo.heic").write_bytes(b"not readable by PIL")
    (src / "photo.txt").write_text("captioned, so meant as an image")

    info = write_shards(src, tmp_path / "out")

    assert info["counts"] == {"train": 1, "val": 0}
    assert info["skipped"] == {
        "undecodable image": 2,
        "missing caption": 1,
        "empty caption": 1,
        "undecodable caption": 1,
        "unsupported file type": 1,
    }
    assert list(by_source(str(tmp_path / "out" / "train-*.tar"))) == ["good.png"]
    err = capsys.readouterr().err
    for name in ("corrupt.png", "truncated.png", "nocaption.png", "blank.png", "latin1.png", "photo.heic"):
        assert f"skipped {name}:" in err


def test_summary_line_reports_splits_and_skips(tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(4):
        captioned(src, f"{i}.png", f"image {i}", i)
    make_image(src / "lonely.png", 9)

    write_shards(src, tmp_path / "out", val_fraction=0.25, shard_size=2)

    out = capsys.readouterr().out
    assert "wrote 3 train + 1 val samples in 3 shards" in out
    assert "skipped 1 (missing caption: 1)" in out


def test_missing_file_in_a_csv_is_skipped(tmp_path, capsys):
    make_image(tmp_path / "here.png", 1)
    (tmp_path / "l.csv").write_text("path,caption\nhere.png,present\ngone.png,absent\nhere.png,\n")

    info = write_shards(tmp_path / "l.csv", tmp_path / "out")

    assert info["counts"]["train"] == 1
    assert info["skipped"] == {"missing file": 1, "empty caption": 1}
    assert "gone.png" in capsys.readouterr().err


def test_nothing_usable_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("captions without images")
    with pytest.raises(ValueError, match=r"no images found in .*empty.*same-name \.txt caption"):
        write_shards(empty, tmp_path / "out")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"nope")
    (broken / "a.txt").write_text("caption")
    with pytest.raises(ValueError, match=r"nothing usable in .*broken.*undecodable image: 1"):
        write_shards(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no half-made output for a failed run

    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_shards(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "list.txt").write_text("a.png a caption\n")
    with pytest.raises(ValueError, match=r"neither a folder nor a \.csv / \.jsonl"):
        write_shards(tmp_path / "list.txt", tmp_path / "out")


def test_list_without_the_needed_columns_names_file_and_columns(tmp_path):
    (tmp_path / "nohead.csv").write_text("a.png,a cat\n")  # no header line
    with pytest.raises(ValueError, match=r"nohead\.csv lacks the columns.*path or image.*caption or text"):
        write_shards(tmp_path / "nohead.csv", tmp_path / "out")
    (tmp_path / "keys.jsonl").write_text(json.dumps({"file": "a.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"keys\.jsonl lacks the columns.*'file'"):
        write_shards(tmp_path / "keys.jsonl", tmp_path / "out")


def test_existing_shards_are_refused_without_overwrite(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(3):
        captioned(src, f"{i}.png", f"number {i}", i)
    write_shards(src, out, shard_size=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with pytest.raises(ValueError, match="--overwrite"):
        write_shards(src, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched

    info = write_shards(src, out, shard_size=10, overwrite=True)
    assert info["shards"]["train"] == ["train-000000.tar"]
    # The earlier run's extra shards would still match train-*.tar: they are gone.
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar"]
    assert len(by_source(str(out / "train-*.tar"))) == 3


def test_out_inside_the_source_is_refused(tmp_path):
    src = tmp_path / "src"
    captioned(src, "a.png", "a", 1)
    for out in (src, src / "shards"):
        with pytest.raises(ValueError, match="inside the source folder"):
            write_shards(src, out)
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "a.txt"]


def test_val_fraction_splits_deterministically(tmp_path):
    src = tmp_path / "src"
    for i in range(10):
        captioned(src, f"img{i}.png", f"caption {i}", i)

    def run(name: str, seed: int) -> tuple[dict, set[str]]:
        info = write_shards(src, tmp_path / name, val_fraction=0.3, shard_size=4, seed=seed)
        return info, set(by_source(str(tmp_path / name / "val-*.tar")))

    info, val = run("a", seed=1)
    assert info["counts"] == {"train": 7, "val": 3}
    assert info["shards"] == {"train": ["train-000000.tar", "train-000001.tar"], "val": ["val-000000.tar"]}
    train = set(by_source(str(tmp_path / "a" / "train-*.tar")))
    assert len(val) == 3 and not train & val and len(train | val) == 10

    _, val_again = run("b", seed=1)
    assert val_again == val
    for shard in ("train-000000.tar", "train-000001.tar", "val-000000.tar"):
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    _, val_other = run("c", seed=2)
    assert val_other != val


def test_main_reports_input_errors_in_one_line(tmp_path, capsys):
    def main(argv):  # as the `omni` command runs it: one error convention for every command
        return run_command(from_folder_main, argv)

    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err and "Traceback" not in err

    src = tmp_path / "src"
    captioned(src, "a.png", "a", 1)
    assert main([str(src), "--out", str(tmp_path / "out"), "--val-fraction", "0"]) == 0
    assert (tmp_path / "out" / "train-000000.tar").is_file()
    assert main([str(src), "--out", str(tmp_path / "out")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(src), "--out", str(tmp_path / "out"), "--overwrite"]) == 0


def test_help_explains_the_layouts(capsys):
    with pytest.raises(SystemExit) as exit_:
        from_folder_main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: omni data from-folder")
    for words in ("same-name caption", "FILE.csv", "FILE.jsonl", "--overwrite", "--val-fraction"):
        assert words in text


def test_boxes_beside_images_become_grounding_data_in_the_code_frame(tmp_path):
    """Objects with boxes (a folder's same-name .json, a JSONL `objects` list, a CSV's JSON text)
    reach KEY.json with the image's size; training moves them with the image to the VQ's frame;
    bad boxes skip the image, counted."""
    from omni.data.objects import read_objects
    from omni.grounding import resized_box

    src = tmp_path / "photos"
    captioned(src, "cat.png", "a cat", 1)
    (src / "cat.json").write_text(json.dumps({"objects": [{"name": "a cat", "box": [1, 2, 5, 7]}]}))
    captioned(src, "dog.png", "a dog", 2)
    (src / "dog.json").write_text(
        json.dumps({"objects": [{"name": "a dog", "box": [5, 0, 1, 3]}]})
    )  # x1 < x0
    captioned(src, "plain.png", "no boxes", 3)
    info = write_shards(src, tmp_path / "out")
    assert info["counts"]["train"] == 2 and info["skipped"] == {"bad boxes": 1}
    samples = by_source(str(tmp_path / "out" / "train-*.tar"))
    meta = json.loads(samples["cat.png"]["json"])
    assert read_objects(meta) == ([("a cat", (1.0, 2.0, 5.0, 7.0))], (8, 8))
    assert "objects" not in json.loads(samples["plain.png"]["json"])
    assert resized_box(meta["objects"][0]["box"], tuple(meta["image_size"]), 32) == (4.0, 8.0, 20.0, 28.0)

    make_image(tmp_path / "set" / "x.png", 4)
    rows = [{"path": "x.png", "caption": "an x", "objects": [{"name": "x", "box": [0, 0, 4, 4]}]}]
    (tmp_path / "set" / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    write_shards(tmp_path / "set" / "list.jsonl", tmp_path / "out2")
    (sample,) = by_source(str(tmp_path / "out2" / "train-*.tar")).values()
    assert json.loads(sample["json"])["objects"] == [{"name": "x", "box": [0.0, 0.0, 4.0, 4.0]}]
    (tmp_path / "set" / "list.csv").write_text(
        'path,caption,objects\nx.png,an x,"[{""name"": ""x"", ""box"": [0, 0, 2, 2]}]"\n'
    )
    write_shards(tmp_path / "set" / "list.csv", tmp_path / "out3")
    (sample,) = by_source(str(tmp_path / "out3" / "train-*.tar")).values()
    assert json.loads(sample["json"])["objects"][0]["box"] == [0.0, 0.0, 2.0, 2.0]
