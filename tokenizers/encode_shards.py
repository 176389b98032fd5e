"""Pre-tokenize image shards into code shards (KEY.codes.npy + KEY.txt + KEY.json).

    python tokenizers/encode_shards.py --vq runs/shapes/vq --shards 'data/shapes/*.tar' --out data/shapes-codes

Each input shard becomes a code shard of the same name in --out. Finished shards are skipped,
so an interrupted run resumes where it stopped (--overwrite re-encodes everything).
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from omni.data.loader import count_samples
from omni.data.shards import expand_shards
from omni.tokenizers import VQFolderError, load_vq
from omni.tokenizers.codes import encode_shard


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vq", required=True, help="VQ folder (config.json + model.safetensors)")
    parser.add_argument("--shards", required=True, help="image shard pattern")
    parser.add_argument("--out", required=True, help="output folder for the code shards")
    parser.add_argument("--batch-size", type=int, default=256, help="images encoded at once")
    parser.add_argument("--overwrite", action="store_true", help="re-encode shards that already exist")
    args = parser.parse_args()
    try:
        vq = load_vq(args.vq)
        urls = expand_shards(args.shards)
    except (VQFolderError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [u for u in urls if args.overwrite or not (out / Path(u).name).exists()]
    if len(todo) < len(urls):
        print(f"{len(urls) - len(todo)} of {len(urls)} shards already encoded in {out}; skipping them")
    totals: Counter = Counter()
    torch.set_grad_enabled(False)
    with tqdm(total=count_samples(todo), desc="encode", unit="img") as bar:
        for url in todo:
            totals.update(encode_shard(vq, url, out / Path(url).name, args.batch_size, progress=bar))
    info = {
        "vq": str(args.vq),
        "shards": [Path(u).name for u in urls],
        "grid": vq.config.grid,
        "codebook_size": vq.config.codebook_size,
        "counts": dict(totals),
    }
    (out / "codes_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"encoded {totals['encoded']} images from {len(todo)} shards into {out}/"
        + "".join(f"; {k}: {v}" for k, v in sorted(totals.items()) if k != "encoded")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
