"""Finding shards and streaming them: pattern expansion, node/worker splitting, endless cycling.

Patterns accept shell globs (`data/shapes/train-*.tar`), brace ranges
(`data/train-{000000..000009}.tar`) and several patterns joined by `::`.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import zlib
from collections.abc import Iterator

import webdataset as wds
from torch.utils.data import IterableDataset

log = logging.getLogger("omni.data")


def is_remote(url: str) -> bool:
    """Whether webdataset opens `url` itself (a URL or a `pipe:` command) rather than a local path."""
    return "://" in url or url.startswith("pipe:")


def expand_shards(pattern: str | list[str]) -> list[str]:
    """Sorted shard paths for a pattern; FileNotFoundError naming the pattern when none exist."""
    if isinstance(pattern, (list, tuple)):
        paths = [p for item in pattern for p in expand_shards(item)]
        return paths
    paths, missing = [], []
    for part in wds.shardlists.expand_urls(pattern):
        if is_remote(part):
            paths.append(part)  # remote or piped shards are opened by webdataset as they are
            continue
        matches = sorted(glob.glob(os.path.expanduser(part)))
        if not matches and not glob.has_magic(part):
            missing.append(part)  # a named shard (e.g. from a brace range) that is not there
        paths.extend(matches)
    if paths and missing:
        raise FileNotFoundError(
            f"{len(missing)} of the shards that {pattern!r} names do not exist (first: {missing[0]}); "
            f"restore them or change the pattern (a brace range names every shard in it)"
        )
    if not paths:
        raise FileNotFoundError(
            f"no shards match {pattern!r}; check the path (globs like 'data/train-*.tar' and brace "
            f"ranges like 'data/train-{{000000..000009}}.tar' are accepted)"
        )
    return paths


def iterate_samples(pattern: str | list[str]) -> Iterator[dict]:
    """Every raw sample of the shards once, in order (bytes per extension, plus __key__ and __url__)."""
    for url in expand_shards(pattern):
        yield from wds.tarfile_samples([{"url": url}])


def worker_slot() -> tuple[int, int]:
    """(index, count) of this data-loading process across all ranks and DataLoader workers."""
    rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
    return rank * num_workers + worker, world_size * num_workers


class ShardStream(IterableDataset):
    """Yields `{"url": shard}` for this rank and worker; endlessly when `resampled`.

    Shards are split by node then by worker (webdataset's `split_by_node` / `split_by_worker`),
    so ranks never read the same shard. Each pass visits this slot's shards in a new random
    order (seeded by seed and epoch). When there are fewer shards than rank x worker slots,
    every slot reads every shard and keeps only its own share of samples (see
    `take_own_share`), which is still disjoint, at the cost of reading more bytes.
    """

    def __init__(self, urls: list[str], seed: int = 0, resampled: bool = True):
        super().__init__()
        self.urls = list(urls)
        self.seed = seed
        self.resampled = resampled
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shard order; called by the loader before each epoch."""
        self.epoch = epoch

    def own_shards(self) -> list[str]:
        """The shards this slot reads."""
        slot, slots = worker_slot()
        if len(self.urls) < slots:
            return self.urls
        return list(wds.split_by_worker(wds.split_by_node(self.urls)))

    def __iter__(self) -> Iterator[dict]:
        mine = self.own_shards()
        rng = random.Random(f"{self.seed}/{self.epoch}")
        while True:
            order = list(mine)
            rng.shuffle(order)
            for url in order:
                yield {"url": url}
            if not self.resampled:
                return


def take_own_share(samples: Iterator[dict], n_urls: int) -> Iterator[dict]:
    """With fewer shards than slots, keep the samples whose (shard, key) hash falls on this slot.

    Hashing rather than counting keeps the split the same on every pass over the shards.
    """
    slot, slots = worker_slot()
    if n_urls >= slots:
        yield from samples
        return
    for sample in samples:
        if zlib.crc32(f"{sample.get('__url__')}/{sample.get('__key__')}".encode()) % slots == slot:
            yield sample


def tar_looks_complete(path: str) -> bool:
    """Whether a local tar ends with the end-of-archive marker (two zero blocks).

    A tar cut at a block boundary reads as a clean but short archive; this catches it.
    """
    try:
        size = os.path.getsize(path)
        if size < 1024 or size % 512:
            return False
        with open(path, "rb") as f:
            f.seek(size - 1024)
            return f.read(1024) == bytes(1024)
    except OSError:
        return False
