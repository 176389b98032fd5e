"""Code shards: image shards with each image replaced by its VQ codes (`KEY.codes.npy`).

Each output sample keeps the input's `KEY.txt` and `KEY.json` and adds `KEY.codes.npy`, a
(h, w) array of int16 codes (int32 when the codebook has more than 32,767 entries). Model
training reads these and never runs the VQ encoder. By default the sample also keeps a copy of
its image file (`KEY.png|jpg...`, the bytes unchanged), which a model with an understanding
encoder reads (`understanding: encoder`): a copy, not a pointer into the image shards, because
a stream of shards cannot look a sample up in another shard (no random access, remote shards),
and the copy keeps a code folder whole on its own; it costs the image's bytes again
(`encode_shards.py --no-images` leaves it out). A shard is written to a temporary name and
renamed when complete, so an interrupted run resumes by skipping the shards that exist.

`codes_info.json` beside the shards records, for every shard, the fingerprint of the VQ weights
that made its codes (`omni.tokenizers.export.vq_fingerprint`), its source and its counts;
`check_code_shards` refuses shards of another VQ before training starts. This module is the
format only (it reads no VQ); `omni.tokenizers.encode` writes the shards.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from omni.atomic import write_file_atomically
from omni.data.shards import is_remote

CODES_INFO = "codes_info.json"
log = logging.getLogger("omni")


def codes_to_npy(codes: np.ndarray, codebook_size: int) -> bytes:
    """Serialise a code grid as .npy bytes in the smallest safe integer type."""
    dtype = np.int16 if codebook_size <= np.iinfo(np.int16).max else np.int32
    buf = io.BytesIO()
    np.save(buf, codes.astype(dtype), allow_pickle=False)
    return buf.getvalue()


def npy_to_codes(data: bytes) -> np.ndarray:
    """Inverse of `codes_to_npy` (never unpickles)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def read_codes_info(folder: str | Path) -> dict:
    """A code folder's codes_info.json (`{"shards": {}}` when absent), with `shards` as {name: entry}.

    Folders written before fingerprints were recorded list shard names only; their entries are
    empty, so their fingerprint reads as unknown.
    """
    path = Path(folder) / CODES_INFO
    if not path.is_file():
        return {"shards": {}}
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-encode the folder with --overwrite") from e
    if not isinstance(info, dict):
        raise ValueError(f"{path} is not a codes_info object; re-encode the folder with --overwrite")
    shards = info.get("shards") or {}
    info["shards"] = {name: {} for name in shards} if isinstance(shards, list) else dict(shards)
    return info


def record_encoded_shard(
    folder: str | Path,
    name: str,
    *,
    vq: str | Path,
    fingerprint: str,
    grid: int,
    codebook_size: int,
    source: str,
    counts: Counter,
) -> None:
    """Add (or replace) shard `name`'s entry in `folder`'s codes_info.json, atomically."""
    info = read_codes_info(folder)
    info.update(vq=str(vq), vq_fingerprint=fingerprint, grid=grid, codebook_size=codebook_size)
    info["shards"][name] = {
        "vq_fingerprint": fingerprint,
        "codebook_size": codebook_size,
        "source": str(source),
        "counts": dict(counts),
    }
    totals: Counter = Counter()
    for entry in info["shards"].values():
        totals.update(entry.get("counts", {}))
    info["counts"] = dict(totals)
    text = json.dumps(info, indent=2) + "\n"
    write_file_atomically(Path(folder) / CODES_INFO, lambda p: p.write_text(text))


def check_code_shards(urls: list[str], vq: str | Path, *, fingerprint: str, codebook_size: int) -> None:
    """Refuse code shards that another VQ than `vq` (its weights' `fingerprint`, `codebook_size`) encoded.

    Each local shard is looked up in the codes_info.json beside it; shards without a recorded
    fingerprint (hand-made, or from an older encode_shards.py) and remote shards are warned
    about, not refused.
    """
    by_folder: dict[Path, list[str]] = {}
    remote = [u for u in urls if is_remote(u)]
    for url in urls:
        if not is_remote(url):
            by_folder.setdefault(Path(url).parent, []).append(Path(url).name)
    if remote:
        log.warning(
            "%d remote code shards (e.g. %s) cannot be checked against %s", len(remote), remote[0], vq
        )
    for folder, names in by_folder.items():
        info = read_codes_info(folder)
        path = folder / CODES_INFO
        fix = f"re-encode them: tokenizers/encode_shards.py --vq {vq} --shards IMAGE_SHARDS --out {folder} --overwrite"
        entries = {n: info["shards"].get(n) or {} for n in names}
        for name, entry in entries.items():
            theirs = entry.get("codebook_size", info.get("codebook_size"))  # older folders: one size
            if theirs is not None and theirs != codebook_size:
                raise ValueError(
                    f"{path} says {name} was encoded with {theirs} codes but the VQ folder {vq} has "
                    f"{codebook_size}; {fix}"
                )
        other = sorted(n for n, e in entries.items() if e.get("vq_fingerprint") not in (None, fingerprint))
        if other:
            raise ValueError(
                f"{len(other)} of the {len(names)} code shards in {folder} were encoded by another VQ than "
                f"{vq} (its weights' fingerprint differs; {path}): {other[:3]}; codes of two tokenizers "
                f"must not be mixed; {fix}, or point data.vq at the VQ that encoded them"
            )
        unknown = sorted(n for n, e in entries.items() if e.get("vq_fingerprint") is None)
        if unknown:
            log.warning(
                "%d code shards in %s have no VQ fingerprint in %s (e.g. %s): cannot check that %s encoded "
                "them; re-encode with tokenizers/encode_shards.py --overwrite to record it",
                len(unknown),
                folder,
                path,
                unknown[0],
                vq,
            )


def is_code_shard(path: str | Path) -> bool:
    """Whether a tar's first sample holds codes (`KEY.codes.npy`): a shard this module wrote."""
    import tarfile

    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".codes.npy"):
                    return True
                if not member.name.endswith((".txt", ".json")):
                    return False
    except (OSError, tarfile.TarError):
        return False
    return False


def code_shard_keeps_images(path: str | Path) -> bool:
    """Whether a local code shard's first sample keeps its image beside the codes."""
    import tarfile

    from omni.data.loader import IMAGE_EXTENSIONS

    first = None
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = Path(member.name).name.partition(".")
            if first is None:
                first = key
            elif key != first:
                return False
            if ext.lower() in IMAGE_EXTENSIONS:
                return True
    return False
