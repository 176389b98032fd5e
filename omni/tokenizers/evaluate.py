"""Measure a VQ tokenizer on image shards: PSNR, SSIM, codebook usage, perplexity, and what a judge says.

A judge scores reconstructions against their samples' KEY.json (`judge(images, metas)` -> one
(group, ok) per image, or None for a batch it cannot judge); the shapes world's is
`omni.shapes.analyzer.judge_reconstructions`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from omni.data.loader import image_text_loader
from omni.progress import progress
from omni.tokenizers.metrics import psnr, ssim
from omni.tokenizers.quantize import perplexity_from_counts
from omni.tokenizers.vqgan import VQModel


@torch.no_grad()
def evaluate_vq(
    model: VQModel,
    shards: str,
    limit: int | None = None,
    batch_size: int = 256,
    judge: Callable[[torch.Tensor, list], list[tuple[str, bool]] | None] | None = None,
) -> dict:
    """Round-trip the images of shards through the tokenizer and report quality figures.

    `usage` is the fraction of the codebook used over all evaluated images; `perplexity` is
    exp(entropy) of their code histogram. With a `judge`, `scene_accuracy` is the fraction of
    judged reconstructions it accepts, and `scene_accuracy_GROUP` that of each of its groups.
    """
    model.eval()
    res = model.config.resolution
    loader = image_text_loader(
        shards,
        resolution=res,
        batch_size=batch_size,
        resampled=False,
        shuffle_buffer=0,
        require_caption=False,
    )
    counts = torch.zeros(model.config.codebook_size, dtype=torch.long)
    psnrs, ssims, verdicts = [], [], {}
    seconds = 0.0
    n = 0
    bar = progress(limit, "eval vq", "img")
    for batch in loader:
        x = batch["image"]
        if limit is not None:
            x = x[: limit - n]
        start = time.perf_counter()
        codes = model.encode(x)
        rec = model.decode(
            codes, grid=(x.shape[-2] // model.config.downsample, x.shape[-1] // model.config.downsample)
        )
        seconds += time.perf_counter() - start
        counts += torch.bincount(codes.flatten(), minlength=model.config.codebook_size)
        psnrs.append(psnr(rec, x))
        ssims.append(ssim(rec, x))
        for group, ok in (judge(rec, batch["meta"][: len(x)]) or []) if judge else []:
            verdicts.setdefault(group, []).append(ok)
        n += len(x)
        bar.update(len(x))
        if limit is not None and n >= limit:
            break
    bar.close()
    if n == 0:
        raise ValueError(f"no images could be read from {shards!r}")
    report = {
        "n": n,
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
        "usage": float((counts > 0).float().mean()),
        "perplexity": perplexity_from_counts(counts),
        "encode_decode_images_per_s": n / seconds,
    }
    if verdicts:
        report["scene_accuracy"] = float(np.mean([ok for oks in verdicts.values() for ok in oks]))
        report |= {f"scene_accuracy_{group}": float(np.mean(oks)) for group, oks in sorted(verdicts.items())}
    return report
