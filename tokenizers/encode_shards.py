"""Pre-tokenize image shards into code shards (KEY.codes.npy + KEY.txt + KEY.json).

    python tokenizers/encode_shards.py --vq runs/shapes/vq --shards 'data/shapes/*.tar' --out data/shapes-codes

Each input shard becomes a code shard of the same name in --out. Finished shards are skipped,
so an interrupted run resumes where it stopped (--overwrite re-encodes everything).
codes_info.json in --out records which VQ weights encoded each shard (a fingerprint): a rerun
with another VQ refuses to mix its codes with the old ones unless --overwrite re-encodes them,
and train.py refuses shards that its --data.vq did not encode.
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from omni.data.loader import count_samples
from omni.data.shards import expand_shards
from omni.tokenizers import VQFolderError, load_vq
from omni.tokenizers.codes import CODES_INFO, encode_shard, read_codes_info, record_encoded_shard
from omni.tokenizers.export import vq_fingerprint


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
        fingerprint = vq_fingerprint(args.vq)
        urls = expand_shards(args.shards)
        out = Path(args.out)
        recorded = read_codes_info(out).get("shards", {})
    except (VQFolderError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = [u for u in urls if (out / Path(u).name).exists()]
    other = [u for u in done if recorded.get(Path(u).name, {}).get("vq_fingerprint") != fingerprint]
    if other and not args.overwrite:
        print(
            f"error: {len(other)} of the shards in {out} were not encoded by {args.vq} (e.g. "
            f"{Path(other[0]).name}: {out / CODES_INFO} records another VQ's fingerprint, or none); "
            f"codes of two tokenizers must not be mixed: rerun with --overwrite to re-encode them, "
            f"or write to another --out",
            file=sys.stderr,
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)
    todo = urls if args.overwrite else [u for u in urls if u not in done]
    if len(todo) < len(urls):
        print(f"{len(urls) - len(todo)} of {len(urls)} shards already encoded in {out}; skipping them")
    totals: Counter = Counter()
    torch.set_grad_enabled(False)
    with tqdm(total=count_samples(todo), desc="encode", unit="img") as bar:
        for url in todo:
            name = Path(url).name
            counts = encode_shard(vq, url, out / name, args.batch_size, progress=bar)
            # Recorded shard by shard, so an interrupted run knows what its finished shards hold.
            record_encoded_shard(out, name, vq=args.vq, fingerprint=fingerprint, source=url, counts=counts)
            totals.update(counts)
    print(
        f"encoded {totals['encoded']} images from {len(todo)} shards into {out}/"
        + "".join(f"; {k}: {v}" for k, v in sorted(totals.items()) if k != "encoded")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
