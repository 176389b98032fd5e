"""`omni tokenizer encode` (tokenizers/encode_shards.py): pre-tokenize image shards into code shards (KEY.codes.npy + KEY.txt + KEY.json + a copy of KEY.png|jpg).

    python tokenizers/encode_shards.py --vq runs/shapes/vq --shards 'data/shapes/*.tar' --out data/shapes-codes

Each input shard becomes a code shard of the same name in --out. Finished shards are skipped,
so an interrupted run resumes where it stopped (--overwrite re-encodes everything).
codes_info.json in --out records which VQ weights encoded each shard (a fingerprint): a folder
holds the codes of one VQ, so a run with another VQ refuses to add its codes beside the old ones
unless --overwrite re-encodes them, and train.py refuses shards that its --data.vq did not
encode. The run refuses an --out that holds its input shards and inputs of the same name, and
holds a lock on --out (a second run into the same folder stops with a clear error).
Each code sample keeps a copy of its image (for models that read images with an understanding
encoder); --no-images leaves the images out (the folder is then codes and text only).
"""

import argparse
from collections import Counter
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from omni.data.codes import CODES_INFO, is_code_shard, read_codes_info, record_encoded_shard
from omni.data.loader import count_samples
from omni.data.shards import expand_shards, is_remote
from omni.errors import CommandError
from omni.progress import progress
from omni.tokenizers import load_vq
from omni.tokenizers.encode import encode_shard
from omni.tokenizers.export import vq_fingerprint

LOCK = ".encode_shards.lock"  # in --out: one encoding run at a time per folder


def plan_problem(urls: list[str], out: Path) -> str | None:
    """Why encoding `urls` into `out` would destroy input or lose shards (None: it would not)."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; give a folder"
    inputs = {Path(u).resolve().parent for u in urls if not is_remote(u)}
    if out.resolve() in inputs:
        return (
            f"--out {out} holds the input shards: their code shards would replace them; "
            f"write the code shards to another folder"
        )
    by_name: dict[str, list[str]] = {}
    for u in urls:
        by_name.setdefault(Path(u).name, []).append(u)
    clash = next((sources for sources in by_name.values() if len(sources) > 1), None)
    if clash:
        return (
            f"{len(clash)} input shards share the name {Path(clash[0]).name} ({', '.join(clash[:2])}): their code "
            f"shards would overwrite each other in {out}; encode each folder into its own --out"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omni tokenizer encode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vq", required=True, help="VQ folder (config.json + model.safetensors)")
    parser.add_argument(
        "--shards", required=True, help="image shard pattern (globs, brace ranges, '::'-joined)"
    )
    parser.add_argument("--out", required=True, help="output folder for the code shards")
    parser.add_argument("--batch-size", type=int, default=256, help="images encoded at once")
    parser.add_argument(
        "--overwrite", action="store_true", help="re-encode this run's shards even where they exist"
    )
    parser.add_argument(
        "--no-images",
        dest="images",
        action="store_false",
        help="leave out the copy of each image (a model with understanding: encoder needs it)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    vq = load_vq(args.vq)
    fingerprint = vq_fingerprint(args.vq)
    urls = expand_shards(args.shards)
    problem = plan_problem(urls, out)
    if problem:
        raise ValueError(problem)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(out / LOCK), timeout=0):
            return encode_all(vq, args, urls, out, fingerprint)
    except Timeout:
        raise CommandError(
            f"another encode_shards.py is writing into {out} ({out / LOCK} is locked); "
            f"wait for it to finish, or write to another --out"
        ) from None


def encode_all(vq, args, urls: list[str], out: Path, fingerprint: str) -> int:
    """Encode what needs encoding into `out` (holding its lock); 0, or a ValueError saying why not."""
    recorded = read_codes_info(out)["shards"]
    names = {Path(u).name for u in urls}
    # A folder holds the codes of one VQ: shards of another VQ block the run unless it re-encodes them.
    foreign = sorted(
        n
        for n, entry in recorded.items()
        if (out / n).exists() and entry.get("vq_fingerprint") != fingerprint
    )
    kept = [n for n in foreign if not (args.overwrite and n in names)]
    if kept:
        fix = (
            "rerun with --overwrite to re-encode them"
            if set(kept) <= names
            else "re-encode those shards with this VQ (--overwrite), or write to another --out"
        )
        raise ValueError(
            f"{len(kept)} code shards in {out} were encoded by another VQ than {args.vq} (e.g. {kept[0]}; "
            f"{out / CODES_INFO} records its fingerprint); codes of two tokenizers must not share a folder: {fix}"
        )
    unrecorded = [u for u in urls if (out / Path(u).name).exists() and Path(u).name not in recorded]
    strangers = [u for u in unrecorded if not is_code_shard(out / Path(u).name)]
    if strangers:
        raise ValueError(
            f"{out / Path(strangers[0]).name} exists and is not a code shard; it is not replaced: "
            f"write to another --out"
        )
    done = [u for u in urls if (out / Path(u).name).exists() and Path(u).name in recorded]
    todo = urls if args.overwrite else [u for u in urls if u not in done]
    if len(todo) < len(urls):
        print(f"{len(urls) - len(todo)} of {len(urls)} shards already encoded in {out}; skipping them")
    totals: Counter = Counter()
    torch.set_grad_enabled(False)
    with progress(count_samples(todo), "encode", "img") as bar:
        for url in todo:
            name = Path(url).name
            counts = encode_shard(vq, url, out / name, args.batch_size, progress=bar, keep_images=args.images)
            # Recorded shard by shard, so an interrupted run knows what its finished shards hold.
            record_encoded_shard(
                out,
                name,
                vq=args.vq,
                fingerprint=fingerprint,
                grid=vq.config.grid,
                codebook_size=vq.config.codebook_size,
                source=url,
                counts=counts,
            )
            totals.update(counts)
    print(
        f"encoded {totals['encoded']} samples from {len(todo)} shards into {out}/"
        + "".join(f"; {k}: {v}" for k, v in sorted(totals.items()) if k != "encoded")
    )
    return 0
