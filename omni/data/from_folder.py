"""Your own data: captioned images -> webdataset shards in the layout the shapes dataset writes.

    omni data from-folder photos/ --out data/mine --val-fraction 0.05
    omni data from-folder captions.csv --out data/mine       # columns path (or image), caption (or text)
    omni data from-folder captions.jsonl --out data/mine     # {"path": ..., "caption": ...} per line

writes `train-000000.tar, ...` (and `val-000000.tar, ...` with --val-fraction) plus `info.json`
into --out. Each sample is `KEY.<ext>` (the image's own bytes; PNG when its format is not one
the loader reads), `KEY.txt` (the caption) and `KEY.json` (`{"source": relative path}`), so the
tokenizer and training commands read it exactly as they read `data/shapes`. Every image is
decoded once here: a corrupt image, a missing or empty caption or a missing file is skipped and
counted, never written. Shards are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from omni.atomic import write_file_atomically
from omni.data.images import load_rgb
from omni.data.loader import IMAGE_EXTENSIONS
from omni.data.objects import read_objects
from omni.progress import progress

SHOW_FIRST = 5  # per reason: print the first few skipped files with details, then only count
PATH_COLUMNS = ("path", "image")  # accepted names of a list's image column, first found wins
CAPTION_COLUMNS = ("caption", "text")
SPLITS = ("train", "val")

LAYOUTS = """\
accepted sources:
  FOLDER       images anywhere below it, each with a same-name caption beside it:
               photos/cat.jpg + photos/cat.txt, photos/2024/dog.png + photos/2024/dog.txt
               (hidden files and folders are ignored)
  FILE.csv     a header line naming a column `path` (or `image`) and `caption` (or `text`)
  FILE.jsonl   one object per line with the same keys: {"path": "a.jpg", "caption": "a cat"}
  Relative image paths in a CSV or JSONL file are relative to that file's folder.

Images PIL can open are accepted; png/jpg/jpeg/webp/bmp/tif/tiff are stored as they are, other
formats (gif, ...) as PNG. Unreadable images, missing or empty captions and missing files are
skipped and counted; the first few of each kind are printed.

Grounding data (optional): objects with boxes in pixels of the image, in a same-name .json
beside it (photos/cat.json: {"objects": [{"name": "a cat", "box": [x0, y0, x1, y1]}]}) or in a
list's `objects` column (a JSON list; in a CSV, its JSON text). Bad boxes skip the image, counted.

output (--out): train-000000.tar, ... [val-000000.tar, ...] and info.json; each sample is
KEY.<image ext>, KEY.txt (caption) and KEY.json ({"source": path}, and "objects" and "image_size"
where boxes were given). Point the tokenizer commands at 'DIR/train-*.tar' (and 'DIR/val-*.tar').
"""


@dataclass
class Item:
    """One listed image: where it is, its caption (None: still to read from `caption_file`)."""

    index: int  # position in the source's listing: the sample key, stable across splits
    path: Path
    source: str  # as the user knows it: path relative to the folder, or as written in the list
    caption: str | None = None
    caption_file: Path | None = None
    problem: tuple[str, str] | None = None  # (reason, detail) known before reading the image
    objects: object = None  # grounding: the objects with boxes, as given (checked by precheck)
    objects_file: Path | None = None  # a folder's same-name .json holding them


class Skips:
    """Counts skipped items by reason and prints the first few of each with the file and detail."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if n <= SHOW_FIRST:
            more = " (further ones of this kind are only counted)" if n == SHOW_FIRST else ""
            print(f"skipped {where}: {reason}{': ' + detail if detail else ''}{more}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Listing the source


def _openable_extensions() -> set[str]:
    """Extensions of the formats PIL can open (not only save), lower-case with the dot."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def list_folder(folder: Path) -> tuple[list[Item], Counter[str]]:
    """Images below `folder` in a stable (sorted) order; also the other files ignored, by extension."""
    image_exts = _openable_extensions()
    items: list[Item] = []
    ignored: Counter[str] = Counter()
    seen_dirs: set[str] = set()
    # followlinks: a folder of symlinks to image folders is common; realpaths stop a link loop.
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        # Hidden entries are tool litter, not data: macOS `._cat.jpg` files are not images at all.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = set(files)
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root, name)
            stem, ext = os.path.splitext(name)
            ext = ext.lower()
            caption = stem + ".txt"
            rel = path.relative_to(folder).as_posix()
            if ext == ".txt" or (ext == ".json" and any(n.startswith(stem + ".") for n in names - {name})):
                continue  # captions and boxes are found from their image
            if ext not in image_exts:
                if caption in names:  # captioned, so meant as an image: say why it is not used
                    items.append(Item(len(items), path, rel, problem=("unsupported file type", ext)))
                else:
                    ignored[ext or "(no extension)"] += 1
                continue
            cap = Path(root, caption) if caption in names else None
            problem = None if cap else ("missing caption", f"no {caption} beside it")
            boxes = Path(root, stem + ".json") if stem + ".json" in names else None
            items.append(Item(len(items), path, rel, caption_file=cap, problem=problem, objects_file=boxes))
    return items, ignored


def _column(names: Sequence[str], wanted: Sequence[str]) -> str | None:
    """The first of `names` that matches one of `wanted` (case and surrounding space ignored)."""
    by_lower = {str(n).strip().lower(): n for n in names}
    return next((by_lower[w] for w in wanted if w in by_lower), None)


def _missing_columns(listing: Path, found: Sequence[str]) -> ValueError:
    return ValueError(
        f"{listing} lacks the columns needed: expected an image column named "
        f"{' or '.join(PATH_COLUMNS)} and a caption column named {' or '.join(CAPTION_COLUMNS)}, "
        f"found {sorted(map(str, found))} (a CSV needs a header line)"
    )


def _list_item(index: int, listing: Path, row: dict, path_key: str, caption_key: str) -> Item:
    """An Item from one CSV row or JSONL object; relative paths resolve against the list's folder."""
    raw_path, caption = row.get(path_key), row.get(caption_key)
    source = raw_path.strip() if isinstance(raw_path, str) else ""
    path = listing.parent / Path(source).expanduser()  # an absolute path replaces the folder
    item = Item(index, path, source or f"{listing.name} entry {index + 1}")
    if not source:
        item.problem = ("missing file", f"no image path in column {path_key!r}")
    elif not isinstance(caption, str):  # absent (a short CSV row, a JSON object without it) or null
        item.problem = ("missing caption", f"no text in {caption_key!r}")
    elif not caption.strip():
        item.problem = ("empty caption", f"{caption_key!r} is blank")
    else:
        item.caption = caption
    item.objects = row.get("objects")  # JSONL: a list; CSV: its JSON text
    return item


def list_csv(listing: Path) -> list[Item]:
    # utf-8-sig: spreadsheets save CSV with a byte-order mark that would rename the first column.
    with open(listing, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        found = reader.fieldnames or []
        path_key, caption_key = _column(found, PATH_COLUMNS), _column(found, CAPTION_COLUMNS)
        if path_key is None or caption_key is None:
            raise _missing_columns(listing, found)
        return [_list_item(i, listing, row, path_key, caption_key) for i, row in enumerate(reader)]


def list_jsonl(listing: Path, skips: Skips) -> list[Item]:
    items: list[Item] = []
    keys: tuple[str, str] | None = None
    with open(listing, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                skips.add("unreadable line", f"{listing.name} line {line_no}", str(e))
                continue
            if not isinstance(obj, dict):
                skips.add("unreadable line", f"{listing.name} line {line_no}", "not a JSON object")
                continue
            if keys is None:  # the first object decides the key names, as a CSV header would
                path_key, caption_key = _column(list(obj), PATH_COLUMNS), _column(list(obj), CAPTION_COLUMNS)
                if path_key is None or caption_key is None:
                    raise _missing_columns(listing, list(obj))
                keys = (path_key, caption_key)
            items.append(_list_item(len(items), listing, obj, *keys))
    return items


# ----------------------------------------------------------------------------------------------
# Reading and checking one item


def _read_caption(item: Item) -> tuple[str | None, tuple[str, str] | None]:
    if item.caption is not None:
        return item.caption.strip(), None
    assert item.caption_file is not None
    try:
        text = item.caption_file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        return None, ("undecodable caption", f"{item.caption_file.name} is not UTF-8 ({e.reason})")
    except OSError as e:
        return None, ("missing caption", f"{item.caption_file.name}: {e.strerror or e}")
    text = text.strip()
    return (text, None) if text else (None, ("empty caption", item.caption_file.name))


def precheck(item: Item) -> tuple[str, str] | None:
    """Why `item` cannot be used, as far as is known without decoding its image (None: no reason yet).

    Run over the whole listing before the split is drawn, so the validation share is taken from
    images that have a caption and exist; the caption is read here and kept on the item.
    """
    if item.problem:
        return item.problem
    text, problem = _read_caption(item)
    if problem:
        return problem
    item.caption = text
    if not item.path.exists():
        return ("missing file", f"{item.path} does not exist")
    return _read_boxes(item)


def _read_boxes(item: Item) -> tuple[str, str] | None:
    """Check the item's objects with boxes (a folder's KEY.json, a list's `objects`), keeping them
    as (name, box) pairs on the item; the problem when they are not usable (None: fine or none)."""
    raw = item.objects
    try:
        if item.objects_file is not None:
            raw = json.loads(item.objects_file.read_text(encoding="utf-8-sig"))
            raw = raw.get("objects") if isinstance(raw, dict) else raw
        elif isinstance(raw, str):
            raw = json.loads(raw) if raw.strip() else None
        item.objects = read_objects({"objects": raw})[0] if raw is not None else None
    except (OSError, ValueError) as e:
        where = item.objects_file.name if item.objects_file else "objects"
        return ("bad boxes", f"{where}: {e}"[:300])
    return None


def read_item(item: Item, skips: Skips) -> dict | None:
    """The webdataset sample for a prechecked `item` (its image decoded as a check), or None after counting why."""
    text = item.caption or ""
    try:
        data = item.path.read_bytes()
    except FileNotFoundError:
        skips.add("missing file", item.source, f"{item.path} does not exist")
        return None
    except OSError as e:  # a folder, no permission, an I/O error: this file only, not the run
        skips.add("unreadable file", item.source, f"{type(e).__name__}: {e.strerror or e}")
        return None
    try:
        rgb = load_rgb(data)  # what the loader will do with these bytes; it must work now
    except UnidentifiedImageError:  # its message names a BytesIO object, not the file
        skips.add("undecodable image", item.source, "not an image format PIL can identify")
        return None
    except Exception as e:  # PIL raises many types for bad bytes; none of them may stop a run
        skips.add("undecodable image", item.source, f"{type(e).__name__}: {e}")
        return None
    ext = item.path.suffix.lower().lstrip(".")
    if ext not in IMAGE_EXTENSIONS:
        # The loader would not find the image under this extension: store it as PNG (lossless).
        buf = io.BytesIO()
        rgb.save(buf, format="PNG")
        data, ext = buf.getvalue(), "png"
    return {
        "__key__": None,  # set by the writer (width depends on the source's size)
        ext: data,
        "txt": text.encode("utf-8"),
        "json": json.dumps(_meta(item, rgb.size), sort_keys=True).encode(),
    }


def _meta(item: Item, size: tuple[int, int]) -> dict:
    """KEY.json of an item: where it came from and, for grounding, its objects with boxes in
    pixels of the stored image and that image's size (omni.data.objects)."""
    meta: dict = {"source": item.source}
    if item.objects:
        meta["objects"] = [{"name": name, "box": list(box)} for name, box in item.objects]
        meta["image_size"] = list(size)
    return meta


# ----------------------------------------------------------------------------------------------
# Writing


def _good_samples(items: list[Item], skips: Skips, key_width: int, counts: Counter[str], split: str, bar):
    for item in items:
        bar.update(1)
        sample = read_item(item, skips)
        if sample is not None:
            sample["__key__"] = f"{item.index:0{key_width}d}"
            counts[split] += 1
            yield sample


def _write_tar(path: Path, samples: Iterator[dict]) -> None:
    import webdataset as wds

    # A fixed mtime makes the same source give byte-identical shards (as the shapes writer does).
    with wds.TarWriter(str(path), mtime=0, encoder=False) as sink:
        for sample in samples:
            sink.write(sample)


def write_split(out: Path, split: str, samples: Iterator[dict], shard_size: int) -> list[str]:
    """Write samples as `out/{split}-NNNNNN.tar`, each atomically; returns the shard names."""
    names: list[str] = []
    while (first := next(samples, None)) is not None:  # opening a shard only for a real sample
        name = f"{split}-{len(names):06d}.tar"
        batch = chain([first], islice(samples, shard_size - 1))
        write_file_atomically(out / name, lambda tmp, batch=batch: _write_tar(tmp, batch))
        names.append(name)
    return names


def _check_out(source: Path, out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the shards")
    src_folder = source if source.is_dir() else None
    if src_folder is not None:
        s, o = src_folder.resolve(), out.resolve()
        if o == s or o.is_relative_to(s):
            raise ValueError(
                f"--out {out} is inside the source folder {source}; shards written there would mix "
                f"with (and be read back as) your images: choose a folder outside it"
            )
    if out.is_dir() and not overwrite:
        old = sorted(p.name for p in out.glob("*.tar"))
        if old:
            raise ValueError(
                f"--out {out} already holds {len(old)} .tar shards ({old[0]}, ...); "
                f"pass --overwrite to replace them, or choose another folder"
            )


def _val_indices(n: int, val_fraction: float, seed: int) -> set[int]:
    """Which of `n` listed items go to validation: a seeded choice of round(n * fraction)."""
    if val_fraction <= 0 or n < 2:
        return set()
    k = min(n - 1, max(1, round(n * val_fraction)))  # a requested split gets >= 1 sample each side
    return set(random.Random(f"omni-from-folder/{seed}/val").sample(range(n), k))


def write_shards(
    source: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.0,
    shard_size: int = 1000,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write the captioned images of `source` (folder, .csv or .jsonl) as shards in `out`.

    Returns the dict also written as `out/info.json`: `counts` (samples per split), `shards`
    (names per split), `skipped` (count per reason), patterns and options.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    source, out = Path(source).expanduser(), Path(out).expanduser()
    expected = (
        "a folder of images each with a same-name .txt caption (a.jpg + a.txt), or a .csv / "
        ".jsonl file with columns path and caption"
    )
    if not source.exists():
        raise FileNotFoundError(f"source {source} does not exist; expected {expected}")
    _check_out(source, out, overwrite)

    skips = Skips()
    ignored: Counter[str] = Counter()
    kind = source.suffix.lower()
    if source.is_dir():
        items, ignored = list_folder(source)
    elif kind == ".csv":
        items = list_csv(source)
    elif kind == ".jsonl":
        items = list_jsonl(source, skips)
    else:
        raise ValueError(f"source {source} is neither a folder nor a .csv / .jsonl file; expected {expected}")
    if not items:
        raise ValueError(f"no images found in {source}; expected {expected}")

    ready = []
    for item in items:
        problem = precheck(item)
        if problem:
            skips.add(problem[0], item.source, problem[1])
        else:
            ready.append(item)
    val = {ready[i].index for i in _val_indices(len(ready), val_fraction, seed)}
    # Shards are written in a seeded shuffled order: a folder sorted by subject (cats/, dogs/)
    # would otherwise give one-subject shards, which a loader's shuffle buffer only partly mixes.
    order = list(ready)
    random.Random(f"omni-from-folder/{seed}/order").shuffle(order)
    key_width = max(9, len(str(len(items) - 1)))
    counts: Counter[str] = Counter()
    shards: dict[str, list[str]] = {}
    with progress(len(order), "from-folder", "img") as bar:
        for split in SPLITS:
            chosen = [it for it in order if (it.index in val) == (split == "val")]
            samples = _good_samples(chosen, skips, key_width, counts, split, bar)
            shards[split] = write_split(out, split, samples, shard_size)

    if not any(shards.values()):
        reasons = ", ".join(f"{r}: {n}" for r, n in skips.counts.most_common())
        raise ValueError(
            f"nothing usable in {source}: all {len(items)} images were skipped ({reasons}); expected {expected}"
        )
    # With --overwrite, shards of an earlier, larger run would still match the patterns: they go
    # only now, after the new shards are complete, so a failed run leaves the old set readable.
    for split in SPLITS:
        for stale in out.glob(f"{split}-*.tar"):
            if stale.name not in shards[split]:
                stale.unlink()

    info = {
        "dataset": "from-folder",
        "source": str(source.resolve()),
        "seed": seed,
        "val_fraction": val_fraction,
        "shard_size": shard_size,
        "counts": {split: counts[split] for split in SPLITS},
        "shards": shards,
        "skipped": dict(skips.counts.most_common()),
        "train_pattern": str(out / "train-*.tar") if shards["train"] else None,
        "val_pattern": str(out / "val-*.tar") if shards["val"] else None,
    }
    text = json.dumps(info, indent=2) + "\n"
    write_file_atomically(out / "info.json", lambda tmp: tmp.write_text(text))

    n_shards = sum(len(v) for v in shards.values())
    skipped = sum(skips.counts.values())
    detail = f" ({', '.join(f'{r}: {n}' for r, n in skips.counts.most_common())})" if skipped else ""
    print(
        f"wrote {counts['train']} train + {counts['val']} val samples in {n_shards} shards to {out}/; "
        f"skipped {skipped}{detail}"
    )
    if ignored:
        kinds = ", ".join(f"{ext}: {n}" for ext, n in ignored.most_common(5))
        print(f"ignored {sum(ignored.values())} files that are neither images nor captions ({kinds})")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omni data from-folder",
        description="Turn your own captioned images into webdataset shards laid out like the "
        "shapes dataset's, ready for the tokenizer and training commands.",
        epilog=LAYOUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="a folder of images with .txt captions, or a .csv / .jsonl list")
    parser.add_argument("--out", required=True, help="output folder for the shards (created if missing)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="fraction of the images held out as val-*.tar shards, chosen by --seed (default 0: none)",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val choice and shard order")
    parser.add_argument("--overwrite", action="store_true", help="replace the shards already in --out")
    args = parser.parse_args(argv)
    write_shards(
        args.source,
        args.out,
        val_fraction=args.val_fraction,
        shard_size=args.shard_size,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    return 0
