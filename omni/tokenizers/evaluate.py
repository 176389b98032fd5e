"""Measure a VQ tokenizer on image shards: PSNR, SSIM, codebook usage, perplexity, scene accuracy."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from omni.data.loader import image_text_loader
from omni.tokenizers.metrics import psnr, ssim
from omni.tokenizers.quantize import perplexity_from_counts
from omni.tokenizers.vqgan import VQModel


def scene_matches(images: torch.Tensor, scenes: list[dict]) -> list[bool]:
    """Per image (B, 3, H, W) in [-1, 1]: does the shapes analyzer read it as its scene (KEY.json "scene")?"""
    from omni.data.scenes import Scene
    from omni.eval.shapes import find_objects, match_scene

    u8 = (
        images.detach()
        .clamp(-1, 1)
        .add(1)
        .mul(127.5)
        .round()
        .to(torch.uint8)
        .permute(0, 2, 3, 1)
        .cpu()
        .numpy()
    )
    return [bool(match_scene(Scene.from_dict(s), find_objects(img))) for s, img in zip(scenes, u8)]


@torch.no_grad()
def evaluate_vq(model: VQModel, shards: str, limit: int | None = None, batch_size: int = 256) -> dict:
    """Round-trip the images of shards through the tokenizer and report quality figures.

    `usage` is the fraction of the codebook used over all evaluated images; `perplexity` is
    exp(entropy) of their code histogram. On shapes data (KEY.json with a "scene"), the analyzer
    judges every reconstruction: `scene_accuracy` is the fraction that keeps its scene exactly.
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
    psnrs, ssims, scene_ok = [], [], {1: [], 2: []}
    seconds = 0.0
    n = 0
    bar = tqdm(total=limit, desc="eval vq", unit="img")
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
        scenes = [m["scene"] for m in batch["meta"][: len(x)] if isinstance(m, dict) and "scene" in m]
        if len(scenes) == len(x):
            for scene, ok in zip(scenes, scene_matches(rec, scenes)):
                scene_ok[len(scene["objects"])].append(ok)
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
    judged = scene_ok[1] + scene_ok[2]
    if judged:
        report["scene_accuracy"] = float(np.mean(judged))
        report["scene_accuracy_one"] = float(np.mean(scene_ok[1])) if scene_ok[1] else None
        report["scene_accuracy_two"] = float(np.mean(scene_ok[2])) if scene_ok[2] else None
    return report
