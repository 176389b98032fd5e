"""Turning image files of any common mode into RGB tensors at a fixed square resolution."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF


def load_rgb(
    source: bytes | str | Path | Image.Image, background: tuple[int, int, int] = (0, 0, 0)
) -> Image.Image:
    """Open image bytes, a path or a PIL image as 8-bit RGB.

    Transparent images (RGBA, LA, palette with transparency) are composited over `background`
    (black, the shapes background); 16-bit and 32-bit greyscale is scaled to 8 bits rather than
    clipped; EXIF rotation is applied. Raises PIL's errors for bytes that are not an image.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (str, Path)) and Path(source).is_dir():
            raise ValueError(f"{source} is a folder, not an image file")
        try:
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            img.load()
        except Image.DecompressionBombError as e:  # not an OSError: it would escape as a traceback
            raise ValueError(f"image too large to decode safely ({e})") from e
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        img = Image.alpha_composite(base, rgba)
    return img.convert("RGB")


def to_tensor(img: Image.Image, resolution: int) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, resolution, resolution) in [-1, 1].

    The shorter side is resized to `resolution` (antialiased), then the centre is cropped.
    [-1, 1] is the range the VQ-GAN works in.
    """
    t = TF.pil_to_tensor(img)  # (3, H, W) uint8
    if min(t.shape[-2:]) != resolution:
        t = TF.resize(t, resolution, antialias=True)
    if t.shape[-2:] != (resolution, resolution):
        t = TF.center_crop(t, [resolution, resolution])
    return t.float().div_(127.5).sub_(1.0)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Inverse of `to_tensor` for a batch (B, 3, H, W) or one image (3, H, W) in [-1, 1]."""
    if images.ndim == 3:
        images = images[None]
    u8 = images.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()
    return [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in u8]


def image_grid(images: list[Image.Image], columns: int = 8, scale: int = 1, padding: int = 2) -> Image.Image:
    """Tile same-size RGB images into one image, `columns` wide, each upscaled `scale` times.

    Nearest-neighbour upscaling keeps 32 px samples readable without inventing detail.
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    from torchvision.utils import make_grid

    size = images[0].size
    tensors = []
    for img in images:
        img = img.convert("RGB")
        if img.size != size:
            img = img.resize(size, Image.Resampling.BICUBIC)
        if scale > 1:
            img = img.resize((size[0] * scale, size[1] * scale), Image.Resampling.NEAREST)
        tensors.append(TF.pil_to_tensor(img))
    grid = make_grid(torch.stack(tensors), nrow=max(1, columns), padding=padding, pad_value=128)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def draw_boxes(image: Image.Image, boxes, scale: int = 1) -> Image.Image:
    """A copy of `image`, upscaled `scale` times (nearest), with each (label, (x0, y0, x1, y1)) box
    drawn over it in white, its label above (boxes in pixels of `image`)."""
    from PIL import ImageDraw

    out = image.convert("RGB")
    if scale > 1:
        out = out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(out)
    for label, (x0, y0, x1, y1) in boxes:
        rect = [x0 * scale, y0 * scale, max(x0, x1) * scale - 1, max(y0, y1) * scale - 1]
        draw.rectangle(rect, outline=(255, 255, 255))
        if label:
            draw.text((rect[0] + 1, max(0, rect[1] - 11)), label, fill=(255, 255, 255))
    return out
