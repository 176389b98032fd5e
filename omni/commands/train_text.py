"""`omni tokenizer train-text` (tokenizers/train_text.py): train the text tokenizer: a byte-level BPE (Hugging Face `tokenizers`) with Omni's special tokens.

    python tokenizers/train_text.py --shards 'data/shapes/train-*.tar' --out runs/shapes/tokenizer.json
    python tokenizers/train_text.py --files corpus1.txt corpus2.txt --vocab-size 32000 --out tok.json

From shards it reads every `KEY.txt`, and also the questions and answers in `KEY.json` when
present (so a VQA model's text is covered); from files it reads every line.
"""

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from omni.checks import check_number
from omni.data.shards import iterate_samples
from omni.tokenizers.text import TextTokenizer, train_bpe


def shard_texts(pattern: str, counts: dict) -> Iterator[str]:
    for sample in iterate_samples(pattern):
        if "txt" in sample:
            counts["captions"] += 1
            yield sample["txt"].decode("utf-8", errors="replace")
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except ValueError:
                continue
            for qa in meta.get("qa", []) if isinstance(meta, dict) else []:
                counts["qa"] += 1
                yield f"{qa.get('question', '')} {qa.get('answer', '')}"


def file_texts(paths: list[str], counts: dict) -> Iterator[str]:
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                counts["lines"] += 1
                yield line.rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omni tokenizer train-text", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--shards", help="shard pattern whose KEY.txt (and KEY.json QA) are the corpus")
    source.add_argument("--files", nargs="+", help="plain text files, one document per line")
    parser.add_argument("--out", required=True, help="where to write tokenizer.json")
    parser.add_argument("--vocab-size", type=int, default=1024, help="total vocabulary incl. special tokens")
    parser.add_argument("--min-frequency", type=int, default=2, help="min count of a pair to merge")
    args = parser.parse_args(argv)
    counts = {"captions": 0, "qa": 0, "lines": 0}
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the path of the tokenizer.json to write")
    check_number("--vocab-size", args.vocab_size, at_least=32, integer=True)
    check_number("--min-frequency", args.min_frequency, at_least=1, integer=True)
    folders = [f for f in args.files or [] if Path(f).is_dir()]
    if folders:
        raise ValueError(f"--files {folders[0]} is a folder; give text files (one document per line)")
    texts = shard_texts(args.shards, counts) if args.shards else file_texts(args.files, counts)
    tok = TextTokenizer(train_bpe(texts, args.vocab_size, args.min_frequency))
    if not any(counts.values()):
        source = f"the shards {args.shards!r}" if args.shards else "the files"
        raise ValueError(
            f"{source} hold no text (no KEY.txt captions, no KEY.json questions, no lines); "
            f"a tokenizer trained on nothing would be useless: check the input"
        )
    tok.save(out)
    read = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    print(
        f"trained a byte-level BPE of {tok.vocab_size} tokens ({len(tok.special_ids())} special) "
        f"on {read}; wrote {args.out}"
    )
    return 0
