"""VQ tokenizer throughput: training images/s and encode+decode images/s.

    python bench/vq_throughput.py [--preset shapes-32] [--seconds 20]

Runs the preset's model on random images (no data loading) in fp32 on the CPU, or on the GPU
when one is present (then also the 256 px preset `f16-256`, in bf16 autocast). Prints one JSON
object last.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from omni.tokenizers import VQConfig, VQModel


def timed(fn, seconds: float) -> tuple[int, float]:
    fn()  # warm-up (allocations, codebook initialisation)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return calls, time.perf_counter() - start


def measure(preset: str, device: str, train_batch: int, infer_batch: int, seconds: float) -> dict:
    cfg = VQConfig.from_name(preset)
    model = VQModel(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(train_batch, 3, cfg.resolution, cfg.resolution, device=device) * 2 - 1
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def train_step():
        with autocast:
            rec, q = model(x)
            loss = F.l1_loss(rec.float(), x) + F.mse_loss(rec.float(), x) + q.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    steps, dt = timed(train_step, seconds)
    model.eval()
    xi = torch.rand(infer_batch, 3, cfg.resolution, cfg.resolution, device=device) * 2 - 1

    def round_trip():
        with torch.inference_mode(), autocast:
            model.decode(model.encode(xi))

    calls, dti = timed(round_trip, seconds)
    return {
        "preset": preset,
        "device": device,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "train_batch": train_batch,
        "train_images_per_s": round(steps * train_batch / dt, 1),
        "encode_decode_images_per_s": round(calls * infer_batch / dti, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="shapes-32")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measurement")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--infer-batch", type=int, default=512)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = [measure(args.preset, device, args.train_batch, args.infer_batch, args.seconds)]
    print(json.dumps(results[0]), flush=True)
    if device == "cuda" and args.preset != "f16-256":
        results.append(measure("f16-256", device, 32, 128, args.seconds))
        print(json.dumps(results[1]), flush=True)
    summary = dict(results[0])
    for r in results[1:]:
        summary[f"{r['preset']}_train_images_per_s"] = r["train_images_per_s"]
        summary[f"{r['preset']}_encode_decode_images_per_s"] = r["encode_decode_images_per_s"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
