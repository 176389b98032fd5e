"""`omni convert from-llamagen-vq`: a LlamaGen VQ tokenizer checkpoint -> an Omni VQ folder.

    omni convert from-llamagen-vq --src vq_ds16_c2i.pt --out runs/llamagen-vq16

The `.pt` is read with torch.load(weights_only=True): tensors and plain containers only, never
arbitrary pickled objects. The sizes come from the weights (VQ-16 is Omni's preset f16-256, VQ-8
f8-256); the folder then works wherever a VQ folder does (encode shards, `--data.vq`, from-hf).
"""

import argparse

from omni.convert import from_llamagen_vq
from omni.tokenizers.export import read_vq_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omni convert from-llamagen-vq", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--src", required=True, help="LlamaGen VQ checkpoint: .pt (or .safetensors)")
    parser.add_argument("--out", required=True, help="the Omni VQ folder to write (written whole)")
    parser.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="image side the VQ was trained at (256 for LlamaGen's VQ-16 and VQ-8); other multiples of "
        "its downsampling factor still encode",
    )
    args = parser.parse_args(argv)
    out = from_llamagen_vq(args.src, args.out, resolution=args.resolution)
    vq = read_vq_config(out)
    print(
        f"wrote {out}: {vq.grid}x{vq.grid} codes per {vq.resolution} px image (downsample {vq.downsample}), "
        f"codebook {vq.codebook_size} x {vq.code_dim}; encode shards with "
        f"`omni tokenizer encode --vq {out} --shards ... --out ...`"
    )
    return 0
