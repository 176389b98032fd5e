"""A Lightning callback that records which samples each rank trained on, for auditing data order.

    python train.py fit --config ... --trainer.callbacks+=omni.training.sample_log.SampleKeyLog \
        --trainer.callbacks.folder=runs/keys

writes `runs/keys/rank-R.tsv` with one line per document: epoch, global step, sample key. With
these files one can check that ranks see disjoint samples within an epoch, and what a resumed
run saw again (it restarts its epoch's shard order). The step is Lightning's global step (the
VQ trainer counts two per batch once its discriminator trains). Works with any batch that carries a "keys"
list (the unified model's packed batches do).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L


class SampleKeyLog(L.Callback):
    """Append each training batch's sample keys to FOLDER/rank-R.tsv (epoch, step, key per line).

    Args:
        folder: where the per-rank files go (created if missing; existing files are appended to).
    """

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self._file = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.folder / f"rank-{trainer.global_rank}.tsv", "a", buffering=1)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        keys = batch.get("keys") if isinstance(batch, dict) else None
        if self._file is None or not keys:
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        self._file.write("".join(f"{epoch}\t{step}\t{key}\n" for key in keys))

    def on_train_end(self, trainer, pl_module) -> None:
        self.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
