"""Encode image shards into code shards (the format: `omni.data.codes`) with a VQ tokenizer."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from omni.data.codes import codes_to_npy
from omni.data.dialogue import image_entries
from omni.data.images import load_rgb, to_tensor
from omni.data.shards import tar_looks_complete
from omni.tokenizers.vqgan import VQModel


@torch.no_grad()
def encode_shard(
    vq: VQModel, src: str, dst: str | Path, batch_size: int = 256, progress=None, keep_images: bool = True
) -> Counter:
    """Encode every image of shard `src` into code shard `dst`; returns counts (encoded, skipped: reason).
    `keep_images` copies each image file beside its codes (for an understanding encoder)."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")  # per process: two runs never share it
    counts: Counter = Counter()
    res, grid = vq.config.resolution, vq.config.grid
    pending: list[tuple[dict, list[str], list[torch.Tensor]]] = []  # sample, image entries, images

    def flush(sink) -> None:
        images = torch.stack([img for _, _, imgs in pending for img in imgs])
        codes = iter(vq.encode(images).view(-1, grid, grid).cpu().numpy())
        for sample, image_exts, _ in pending:
            # A dialogue's numbered images (KEY.0.png, ...) give (N, h, w); one image (h, w).
            mine = [next(codes) for _ in image_exts]
            grid_codes = np.stack(mine) if image_exts[0][0].isdigit() else mine[0]
            out = {
                "__key__": sample["__key__"],
                "codes.npy": codes_to_npy(grid_codes, vq.config.codebook_size),
            }
            for ext in ("txt", "json") + (tuple(image_exts) if keep_images else ()):
                if ext in sample:
                    out[ext] = sample[ext]
            sink.write(out)
        counts["encoded"] += len(pending)
        if progress is not None:
            progress.update(len(pending))
        pending.clear()

    def skip(exn: Exception) -> bool:
        counts["skipped: unreadable shard data"] += 1
        return True

    if os.path.isfile(src) and not tar_looks_complete(src):  # local tars only, as the loader checks
        counts["truncated shard (re-create it)"] += 1  # its readable samples are still encoded
    with wds.TarWriter(str(tmp)) as sink:
        for sample in wds.tarfile_samples([{"url": src}], handler=skip):
            exts = image_entries(sample)
            if not exts:
                counts["skipped: missing image"] += 1
                continue
            try:
                rgb = [load_rgb(sample[ext]) for ext in exts]
                images = [to_tensor(image, res) for image in rgb]
            except Exception:  # undecodable bytes must not stop a long encoding run
                counts["skipped: undecodable image"] += 1
                continue
            sample = with_image_size(sample, rgb[0].size)
            pending.append((sample, exts, images))
            if sum(len(imgs) for _, _, imgs in pending) >= batch_size:
                flush(sink)
        if pending:
            flush(sink)
    os.replace(tmp, dst)
    return counts


def with_image_size(sample: dict, size: tuple[int, int]) -> dict:
    """The sample, its KEY.json given the image's (width, height) as "image_size" where it has
    objects with boxes and no size yet: the codes are of the image resized and cropped to the
    VQ's resolution, and the boxes are moved with it when they are read (omni.data.objects)."""
    raw = sample.get("json")
    if raw is None or b'"objects"' not in raw:
        return sample
    try:
        meta = json.loads(raw)
    except ValueError:
        return sample  # counted where it is read
    if not isinstance(meta, dict) or "objects" not in meta or "image_size" in meta:
        return sample
    return sample | {"json": json.dumps(meta | {"image_size": list(size)}).encode()}
