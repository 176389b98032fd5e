"""Evaluate a trained VQ tokenizer on image shards and print one JSON object.

    python tokenizers/eval_vq.py --vq runs/shapes/vq --shards 'data/shapes/val-*.tar'

Keys: psnr (dB), ssim, usage and perplexity of the codebook over the evaluated images, and on
shapes data scene_accuracy (the fraction of reconstructions the analyzer still reads as the
same scene), split by one- and two-object scenes.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from omni.tokenizers import VQFolderError, load_vq
from omni.tokenizers.evaluate import evaluate_vq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vq", required=True, help="VQ folder (config.json + model.safetensors)")
    parser.add_argument("--shards", required=True, help="image shard pattern, e.g. 'data/shapes/val-*.tar'")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    try:
        model = load_vq(args.vq)
        report = evaluate_vq(model, args.shards, args.limit, args.batch_size)
    except (VQFolderError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
