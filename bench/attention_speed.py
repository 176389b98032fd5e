"""Omni-attention speed by backend: forward + backward time of one attention call.

    python bench/attention_speed.py --seq-len 4096      # on a GPU: sdpa (dense mask), flex, xformers

Each row of the batch packs documents of [text, image block (bidirectional), text], the shape
of a 256 px model's training data (1024-token images). Times are medians over repeated calls,
mask construction excluded and reported separately (it is built once per batch and shared by
all layers). Prints one JSON object last with the time of each backend and the speedups
against sdpa.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from omni.attention import OmniMask, Segment, available_backends, build_visibility


def packed_visibility(batch: int, seq_len: int, text: int, image: int):
    rows = []
    for _ in range(batch):
        segs, offset, d = [], 0, 0
        while offset < seq_len:
            for length, is_image in ((text, False), (image, True), (text, False)):
                end = min(offset + length, seq_len)
                if end > offset:
                    segs.append(Segment(offset, end, d, image=is_image))
                offset = end
            d += 1
        rows.append(segs)
    return build_visibility(rows, seq_len)


def timed_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--text", type=int, default=64, help="text tokens before and after each image")
    p.add_argument("--image", type=int, default=1024, help="image block length")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("attention_speed.py compares the GPU backends; it needs a CUDA device")

    vis = packed_visibility(args.batch, args.seq_len, args.text, args.image).to("cuda")
    shape = (args.batch, args.heads, args.seq_len, args.head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    result = {
        "batch": args.batch,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "seq_len": args.seq_len,
        "image_block": args.image,
        "device": torch.cuda.get_device_name(),
    }
    visible = vis.dense_mask().float().mean().item()
    result["visible_fraction"] = round(visible, 4)
    for backend in available_backends("cuda"):
        mask = OmniMask(vis, backend, args.heads)
        build_ms = timed_ms(lambda b=backend: OmniMask(vis, b, args.heads), 5)

        def step(mask=mask):
            out = mask.attend(q, k, v)
            out.backward(grad)

        for _ in range(3):  # compile and warm up
            step()
        result[f"{backend}_ms"] = round(timed_ms(step, args.repeats), 3)
        result[f"{backend}_mask_build_ms"] = round(build_ms, 3)
    for backend in ("flex", "xformers"):
        if f"{backend}_ms" in result:
            result[f"{backend}_speedup_vs_sdpa"] = round(result["sdpa_ms"] / result[f"{backend}_ms"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
