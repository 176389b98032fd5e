"""Batched, shuffled, endless webdataset loaders for image-text and text-only shards.

    loader = image_text_loader("data/shapes/train-*.tar", resolution=32, batch_size=64)
    for batch in loader:          # len(loader) batches per epoch
        batch["image"]            # (B, 3, 32, 32) float in [-1, 1]
        batch["text"]             # list of B captions
        batch["key"], batch["meta"]  # sample keys, parsed KEY.json (or None)

Streams are endless (resampled) and split by node and by worker, and every rank yields
exactly `len(loader)` batches per epoch, so distributed ranks whose shards hold different
numbers of samples never wait on each other. A bad sample (undecodable image, missing or
empty caption, unreadable JSON, a truncated tar) is skipped and counted: the worker warns with
the shard and key for the first few of each kind, and `loader.skipped` holds the totals
(also logged at the end of every epoch). The counts travel with the batches, so they cover
the bad samples met while assembling the batches that were delivered.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial

import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from omni.data.images import load_rgb, to_tensor
from omni.data.shards import (
    ShardStream,
    expand_shards,
    is_remote,
    take_own_share,
    tar_looks_complete,
    worker_slot,
)

log = logging.getLogger("omni.data")

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")
WARN_FIRST = 5  # per worker and reason: warn with details for the first few, then only count
# An endless stream in which no sample is usable would spin forever (and a DataLoader worker
# ignores SIGTERM while it does): after this many unusable samples in a row it fails instead.
# 10,000 is a whole img2dataset shard, so one bad shard among good ones never stops a run.
UNUSABLE_IN_A_ROW = 10_000


class SkipCounter:
    """Counts skipped samples by reason inside one loading process; batches carry the counts out."""

    def __init__(self, limit: int = UNUSABLE_IN_A_ROW):
        self.pending: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()
        self.limit, self.in_a_row = limit, 0
        self._last_tar_error = ("", "")
        self._checked_shards: set[str] = set()

    def used(self) -> None:
        """A sample made it into a batch: the run of unusable ones is over."""
        self.in_a_row = 0

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.pending[reason] += 1
        self.seen[reason] += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            reasons = ", ".join(f"{r}: {n}" for r, n in self.seen.most_common(3))
            raise ValueError(
                f"the last {self.in_a_row} samples were all unusable ({reasons}; the last at {where}"
                f"{': ' + detail if detail else ''}); no batch can be formed: fix the data or the options "
                f"named above (data.vq for codes out of range, data.seq_len for over-long documents)"
            )
        if self.seen[reason] <= WARN_FIRST:
            more = " (further ones of this kind are only counted)" if self.seen[reason] == WARN_FIRST else ""
            log.warning("skipped sample: %s at %s%s%s", reason, where, f": {detail}" if detail else "", more)

    def tar_error(self, exn: Exception) -> bool:
        """webdataset exception handler: count the error and carry on with the next shard."""
        text = str(exn.args[0]) if exn.args else ""
        msg, _, where = text.partition(" @ ")
        if len(exn.args) > 1:
            where = str(exn.args[-1])
        last_msg, last_where = self._last_tar_error
        if msg == last_msg and where and where in last_where:
            return True  # the same failure, reported again by an outer layer of webdataset
        self._last_tar_error = (msg, where)
        self.skip("unreadable shard data", where or "?", f"{type(exn).__name__}: {msg}")
        return True

    def check_shards(self, src: Iterator[dict]) -> Iterator[dict]:
        """Pipeline stage: warn once per shard about a local tar that lacks its end marker."""
        for item in src:
            url = item["url"]
            if url not in self._checked_shards and os.path.isfile(url):
                self._checked_shards.add(url)
                if not tar_looks_complete(url):
                    self.skip(
                        "truncated shard",
                        url,
                        "no end-of-archive marker; its last samples are lost, re-create or re-download it",
                    )
            yield item

    def drain(self) -> dict[str, int]:
        out = dict(self.pending)
        self.pending.clear()
        return out


# ----------------------------------------------------------------------------------------------
# Per-sample decoding: return None to skip (after counting why)


def checked_caption(sample: dict, skips: SkipCounter, where: str, max_chars: int) -> str | None:
    """The sample's KEY.txt as stripped UTF-8, or None (counted) when missing, empty, undecodable or over-long."""
    raw = sample.get("txt")
    if raw is None:
        skips.skip("missing caption", where, "no .txt file")
        return None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        skips.skip("undecodable caption", where, str(e))
        return None
    if not text:
        skips.skip("empty caption", where)
        return None
    if len(text) > max_chars:
        skips.skip("over-long caption", where, f"{len(text)} characters > max_caption_chars={max_chars}")
        return None
    return text


def decode_image_text(
    sample: dict, skips: SkipCounter, resolution: int, max_caption_chars: int, require_caption: bool = True
) -> dict | None:
    """Raw webdataset sample -> {"image", "text", "key", "meta"}, or None if it is bad.

    With `require_caption=False` (image-only training) captions are not judged and may be "".
    """
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        skips.skip(
            "missing image",
            where,
            f"no image file among {sorted(k for k in sample if not k.startswith('__'))}",
        )
        return None
    if require_caption:
        text = checked_caption(sample, skips, where, max_caption_chars)
        if text is None:
            return None
    else:
        text = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
    meta = None
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError as e:
            skips.skip("unreadable json", where, str(e))
            return None
    try:
        image = to_tensor(load_rgb(sample[ext]), resolution)
    except Exception as e:  # PIL raises many types for bad bytes; none of them may stop a run
        skips.skip("undecodable image", where, f"{type(e).__name__}: {e}")
        return None
    return {"image": image, "text": text, "key": sample["__key__"], "meta": meta}


def decode_text_sample(sample: dict, skips: SkipCounter, max_caption_chars: int) -> dict | None:
    """Raw sample -> {"text", "key"}, or None if it is bad."""
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    text = checked_caption(sample, skips, where, max_caption_chars)
    return None if text is None else {"text": text, "key": sample["__key__"]}


def collate(samples: list[dict]) -> dict:
    """Stack tensors, keep everything else as lists."""
    out = {}
    for k in samples[0]:
        values = [s[k] for s in samples]
        out[k] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def _decode_stage(src: Iterator[dict], decode: Callable, skips: SkipCounter) -> Iterator[dict]:
    for sample in src:
        out = decode(sample, skips)
        if out is not None:
            yield out


def _batch_stage(src: Iterator[dict], batch_size: int, skips: SkipCounter) -> Iterator[dict]:
    buf = []
    for sample in src:
        buf.append(sample)
        skips.used()
        if len(buf) == batch_size:
            yield {**collate(buf), "skipped": skips.drain()}
            buf = []
    if buf:
        yield {**collate(buf), "skipped": skips.drain()}


# ----------------------------------------------------------------------------------------------
# The dataset and the loader


class ShardDataset(IterableDataset):
    """Shards -> (split by node/worker, endless) samples -> shuffled -> decoded -> batches.

    Built anew in every worker at every epoch, so the shuffle is seeded by (seed, epoch, slot).
    """

    def __init__(
        self,
        urls: list[str],
        decode: Callable[[dict, SkipCounter], dict | None],
        batch_size: int,
        *,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        resampled: bool = True,
        select_files: Callable[[str], bool] | None = None,
        batch_stage: Callable[[Iterator[dict], SkipCounter, str], Iterator[dict]] | None = None,
    ):
        """`batch_stage(samples, skips, seed)` replaces plain batching (e.g. packing into sequences)."""
        super().__init__()
        self.urls, self.decode, self.batch_size = urls, decode, batch_size
        self.shuffle_buffer, self.seed, self.resampled = shuffle_buffer, seed, resampled
        self.select_files = select_files
        self.batch_stage = batch_stage
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        slot, _ = worker_slot()
        skips = SkipCounter()
        shards = ShardStream(self.urls, seed=self.seed, resampled=self.resampled)
        shards.set_epoch(self.epoch)
        stages = [
            shards,
            skips.check_shards,
            wds.tarfile_to_samples(handler=skips.tar_error, select_files=self.select_files),
            partial(take_own_share, n_urls=len(self.urls)),
        ]
        seed = f"{self.seed}/{self.epoch}/{slot}"
        if self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, seed=seed))
        stages.append(partial(_decode_stage, decode=self.decode, skips=skips))
        if self.batch_stage is None:
            stages.append(partial(_batch_stage, batch_size=self.batch_size, skips=skips))
        else:
            stages.append(partial(self.batch_stage, skips=skips, seed=seed))
        return iter(wds.DataPipeline(*stages))


class ShardLoader:
    """A DataLoader over a `ShardDataset` with a fixed number of batches per epoch.

    With `resampled=False` (one pass, for evaluation) iteration ends with the data instead, and
    `len()` is an upper bound.

    Iterating yields batches without their skip counts, which are summed into `skipped`
    (all epochs) and logged at the end of each epoch.
    """

    def __init__(
        self, dataset: ShardDataset, batches_per_epoch: int, num_workers: int = 0, name: str = "data"
    ):
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.dataset = dataset
        self.batches_per_epoch = batches_per_epoch
        self.name = name
        self.epoch = 0
        self.skipped: Counter[str] = Counter()
        self.loader = wds.WebLoader(
            dataset, batch_size=None, num_workers=num_workers, persistent_workers=False
        )
        if dataset.resampled:  # an endless stream is cut into epochs; a single pass ends by itself
            self.loader = self.loader.with_epoch(batches_per_epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of `epoch` for the next iteration (as DistributedSampler does)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        # Advance first, so an iteration abandoned part-way still moves on to a new shuffle.
        epoch, self.epoch = self.epoch, self.epoch + 1
        self.dataset.set_epoch(epoch)
        this_epoch: Counter[str] = Counter()
        try:
            for batch in self.loader:
                this_epoch.update(batch.pop("skipped"))
                yield batch
        finally:
            self.skipped.update(this_epoch)
            if this_epoch:
                detail = ", ".join(f"{k}: {v}" for k, v in sorted(this_epoch.items()))
                log.warning(
                    "%s epoch %d: skipped %d bad samples (%s); %d in all",
                    self.name,
                    epoch,
                    sum(this_epoch.values()),
                    detail,
                    sum(self.skipped.values()),
                )


def count_samples(urls: list[str]) -> int:
    """Number of distinct sample keys in local tar shards (reads headers only)."""
    total = 0
    for url in urls:
        keys = set()
        try:
            with tarfile.open(url, "r:") as tar:
                for member in tar:
                    folder, base = os.path.split(member.name)
                    if member.isreg() and "." in base and not base.startswith("__"):
                        keys.add((folder, base.split(".", 1)[0]))  # webdataset's key: up to the first dot
        except (tarfile.TarError, OSError) as e:
            log.warning("could not count samples in %s (%s); counting what was readable", url, e)
        total += len(keys)
    return total


def _epoch_batches(urls: list[str], batch_size: int, batches_per_epoch: int | None) -> int:
    if batches_per_epoch is not None:
        return batches_per_epoch
    if any(is_remote(u) for u in urls):
        raise ValueError("remote shards: set batches_per_epoch (their samples cannot be counted cheaply)")
    world_size = wds.utils.pytorch_worker_info()[1]
    return max(1, math.ceil(count_samples(urls) / (batch_size * world_size)))


def image_text_loader(
    shards: str | list[str],
    *,
    resolution: int = 32,
    batch_size: int = 32,
    num_workers: int = 0,
    batches_per_epoch: int | None = None,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    resampled: bool = True,
    max_caption_chars: int = 8192,
    require_caption: bool = True,
) -> ShardLoader:
    """Loader of {"image": (B,3,R,R) in [-1,1], "text", "key", "meta"} batches from image-text shards.

    `batches_per_epoch` defaults to one pass over the shards' samples per epoch across all ranks.
    `resampled=False` reads the shards once (evaluation). Captions longer than
    `max_caption_chars` are skipped and counted; `require_caption=False` reads images whatever
    their captions (tokenizer training).
    """
    decode = partial(
        decode_image_text,
        resolution=resolution,
        max_caption_chars=max_caption_chars,
        require_caption=require_caption,
    )
    return _loader(
        shards,
        decode,
        "image-text",
        batch_size,
        num_workers,
        batches_per_epoch,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        resampled=resampled,
    )


def text_loader(
    shards: str | list[str],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    batches_per_epoch: int | None = None,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    resampled: bool = True,
    max_caption_chars: int = 8192,
) -> ShardLoader:
    """Loader of {"text", "key"} batches from the `KEY.txt` files of shards (other files are not read)."""
    decode = partial(decode_text_sample, max_caption_chars=max_caption_chars)
    return _loader(
        shards,
        decode,
        "text",
        batch_size,
        num_workers,
        batches_per_epoch,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        resampled=resampled,
        select_files=_is_text_file,
    )


def _is_text_file(name: str) -> bool:
    return name.endswith(".txt")


def _loader(
    shards, decode, name, batch_size, num_workers, batches_per_epoch, **dataset_options
) -> ShardLoader:
    urls = expand_shards(shards)
    ds = ShardDataset(urls, decode, batch_size, **dataset_options)
    return ShardLoader(ds, _epoch_batches(urls, batch_size, batches_per_epoch), num_workers, name=name)
