"""The guarded folder writer: a release (model, VQ, samples) is written whole and only ever
replaces a folder that Omni wrote itself.

    with writing_folder("runs/shapes/model", kind="model", run=run_id) as tmp:
        ...  # fill tmp; on success it replaces the folder in one swap, on error it is removed

Every folder written this way holds `.omni-release.json` ({"kind", "run", ...}). An existing
destination without that file (a user's folder, a checkpoint folder, a VQ given as input), of
another kind, or (when `run` is given) of another training run is refused with an error naming
it, before any work is done and again just before the swap; nothing is moved or deleted. The
swap (two renames and removing the old copy) runs with SIGINT/SIGTERM deferred, so Ctrl-C never
leaves half of an old release behind.

Reading is shared too: `read_release_config` (the folder, its config.json, format and version)
and `load_strict` (weights that match the module exactly and hold finite numbers) serve the
model folder (omni.checkpoint) and the VQ folder (omni.tokenizers.export) alike.

`RunOutputs` is what a training run adds: a run id kept in its checkpoints, and the checks made
when training starts (a fresh run never takes over another run's release or checkpoints).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omni.atomic import give_default_mode

MARKER = ".omni-release.json"
# What a training run records of itself in its release's marker (omni.schedule.run_facts).
RUN_FACTS = ("trained_steps", "planned_steps", "stopped_by_time_limit")
# The safetensors header metadata Hugging Face loaders expect of PyTorch weights; Omni's own
# facts live in the config.json beside the weights.
SAFETENSORS_METADATA = {"format": "pt"}


class FolderGuardError(ValueError):
    """Refused to replace a folder that Omni did not write (or another run wrote); nothing changed."""


def read_marker(folder: str | Path) -> dict | None:
    """The folder's `.omni-release.json`, or None when it has none (or an unreadable one)."""
    path = Path(folder) / MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def check_replaceable(
    dst: str | Path, kind: str, run: str | None = None, what: str = "output folder"
) -> None:
    """Raise FolderGuardError unless `dst` is absent or a `kind` folder Omni wrote (for run `run`)."""
    dst = Path(dst)
    old = dst.with_name(f".{dst.name}.old")
    if not dst.exists() and not dst.is_symlink():
        if old.exists():  # a save killed between its two renames: the only copy waits there
            raise FolderGuardError(
                f"{what} {dst} is missing but {old} holds the release an interrupted save moved away; "
                f"rename it back to {dst} (or delete it if you do not want it), then rerun"
            )
        return
    if dst.is_symlink():
        raise FolderGuardError(f"{what} {dst} is a symbolic link; give the real folder, or another path")
    if not dst.is_dir():
        raise FolderGuardError(f"{what} {dst} exists and is not a folder; choose another path")
    marker = read_marker(dst)
    if marker is None:
        if not any(dst.iterdir()):
            return  # an empty folder holds nothing to lose
        raise FolderGuardError(
            f"{what} {dst} exists and was not written by Omni (it has no {MARKER}), so it is not replaced; "
            f"choose another path, or move the folder away yourself"
        )
    if marker.get("kind") != kind:
        raise FolderGuardError(
            f"{what} {dst} holds an Omni {marker.get('kind')!r} folder, not a {kind!r} one; choose another path"
        )
    if run is not None and marker.get("run") != run:
        steps = marker.get("trained_steps")
        held = f" ({steps} steps)" if steps is not None else ""
        raise FolderGuardError(
            f"{what} {dst} holds the release of another run{held}; a new run never replaces it: choose another "
            f"export folder, resume that run with --ckpt_path, or delete the folder yourself"
        )


def save_tensors(path: str | Path, tensors: dict) -> None:
    """Write tensors (contiguous, on the CPU) as a safetensors file inside a folder being written."""
    from safetensors.torch import save_file  # here: the folder guard itself needs no torch

    save_file(tensors, str(path), metadata=SAFETENSORS_METADATA)


def read_release_config(
    folder: str | Path, fmt: str, version: int, error: type[Exception], train_hint: str
) -> dict:
    """The config.json of a release folder written in format `fmt` (versions 1 to `version`), as a
    dict; `error` naming the file and the fix when the folder, the file, its JSON or its format is
    wrong. `train_hint` says how to make such a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        old = folder.with_name(f".{folder.name}.old")
        hint = (
            f"; {old} holds the previous release left by an interrupted save: rename it to {folder}"
            if old.is_dir()
            else f"; {train_hint}"
        )
        raise error(f"{folder} does not exist{hint}")
    path = folder / "config.json"
    if not path.is_file():
        raise error(f"{path} not found: is {folder} an {fmt} folder? ({train_hint})")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise error(f"{path} is not valid JSON ({str(e)[:200]}); re-export it") from e
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise error(f'{path} is not an {fmt} config (expected "format": "{fmt}")')
    found = raw.get("format_version", version)
    if not isinstance(found, int) or isinstance(found, bool) or not 1 <= found <= version:
        raise error(
            f"{path}: format_version {found!r} is not one this Omni reads (1 to {version}); "
            f"a newer Omni wrote it: upgrade omni-multimodal"
        )
    return raw


def load_strict(module, state: dict, weights: str, config: str, error: type[Exception]) -> None:
    """Load `state` into `module` strictly (assigning the tensors); `error` naming the files when
    names or shapes differ, or a tensor holds NaN or inf (a diverged run, a broken copy)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or bad_shapes:
        raise error(
            f"the weights in {weights} do not match {config}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {bad_shapes[:5]}; the files come from different models, re-export"
        )
    for name, tensor in state.items():
        if tensor.is_floating_point() and not tensor.isfinite().all():
            raise error(
                f"the weights in {weights}: {name} holds NaN or inf values; the model is damaged (a run that "
                f"diverged, or a broken copy): re-export it from a good checkpoint"
            )
    module.load_state_dict(state, strict=True, assign=True)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT / SIGTERM until the block ends, then deliver them (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is None:
            continue  # a handler installed outside Python could not be put back: leave it alone
        previous[sig] = signal.signal(sig, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for number in dict.fromkeys(received):
            signal.raise_signal(number)


def _swap(tmp: Path, dst: Path, kind: str) -> None:
    """Move `tmp` to `dst`, the old `dst` (if any) out of the way first, then delete the old copy."""
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():  # a copy an earlier swap could not finish deleting: only ever ours
        check_replaceable(old, kind, what="leftover folder")
        shutil.rmtree(old)
    if dst.exists():
        os.rename(dst, old)
    os.rename(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def writing_folder(
    dst: str | Path, kind: str, run: str | None = None, facts: dict | None = None, what: str = "output folder"
) -> Iterator[Path]:
    """A temporary sibling of `dst` to fill; on success it replaces `dst` whole (see the module doc).

    `facts` are extra entries for the marker (e.g. trained_steps).
    """
    dst = Path(dst)
    check_replaceable(dst, kind, run, what)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        yield tmp
        marker = {"kind": kind, "run": run, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(facts or {})}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        for path in [tmp, *tmp.rglob("*")]:
            give_default_mode(path)  # mkdtemp and safetensors make 0700 / 0600: unreadable to others
            if path.is_file():  # everything on disk before the swap makes it visible
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        with deferred_interrupts():
            check_replaceable(dst, kind, run, what)  # again: another process may have put it there
            _swap(tmp, dst, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class RunOutputs:
    """A training run's identity and the guards on its outputs.

    The run id is kept in every Lightning checkpoint (`omni_run`), so a resumed run may replace
    its own release while a fresh run into the same folder is refused when training starts,
    not at its first checkpoint. A fresh run also refuses a checkpoint folder that already holds
    checkpoints (Lightning would add `last-v1.ckpt` beside the old run's `last.ckpt`).
    """

    def __init__(self, export_dir: str | None, kind: str):
        self.export_dir, self.kind = export_dir, kind
        self.run = uuid.uuid4().hex
        self.export_pending = False
        self.resumed_without_run = False

    def save(self, checkpoint: dict) -> None:
        checkpoint["omni_run"] = self.run

    def load(self, checkpoint: dict) -> None:
        self.resumed_without_run = "omni_run" not in checkpoint  # written before run ids existed
        self.run = checkpoint.get("omni_run", self.run)

    def check_at_start(self, trainer, inputs: dict[str, str | None]) -> None:
        """Refuse outputs that would destroy something, before the first step (call it from
        on_train_start: under FSDP the checkpoint, and its run id, is restored only after setup).

        `inputs` names the run's input paths (data.vq, the tokenizer, ...), which an export folder
        must neither be nor contain. Rank 0 decides and every rank raises the same error.
        """
        problem = None
        if trainer.is_global_zero:
            try:
                self._check(trainer, inputs)
            except FolderGuardError as e:
                problem = str(e)
        problem = trainer.strategy.broadcast(problem, src=0)
        if problem:
            raise FolderGuardError(problem)

    def _check(self, trainer, inputs: dict[str, str | None]) -> None:
        resumed = trainer.ckpt_path is not None
        checkpoint_dir = getattr(trainer.checkpoint_callback, "dirpath", None)
        if checkpoint_dir and not resumed and Path(checkpoint_dir).is_dir():
            old = sorted(Path(checkpoint_dir).glob("*.ckpt"))
            if old:
                raise FolderGuardError(
                    f"the checkpoint folder {checkpoint_dir} already holds {old[0].name} of an earlier run; "
                    f"resume it with --ckpt_path last, or give this run its own folder (trainer.default_root_dir "
                    f"and the ModelCheckpoint dirpath)"
                )
        if not self.export_dir:
            return
        export = Path(self.export_dir).resolve()
        clashes = {"the checkpoint folder": checkpoint_dir, **inputs}
        for name, path in clashes.items():
            if path and (export == Path(path).resolve() or export in Path(path).resolve().parents):
                raise FolderGuardError(
                    f"the export folder {self.export_dir} is or contains {name} {path}; a release replaces "
                    f"its folder whole: choose another export folder"
                )
        if resumed and self.resumed_without_run:
            self._adopt_unmarked_release()
        check_replaceable(self.export_dir, self.kind, self.run, what="the export folder")

    def _adopt_unmarked_release(self) -> None:
        """Resuming a checkpoint from before run ids: its release (an Omni folder of our kind
        without a marker) is taken as this run's, so the upgrade does not strand the run."""
        folder = Path(self.export_dir)
        if not folder.is_dir() or read_marker(folder) is not None:
            return
        try:
            written = json.loads((folder / "config.json").read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            return
        if written == {"model": "omni-model", "vq": "omni-vq"}.get(self.kind):
            marker = {
                "kind": self.kind,
                "run": self.run,
                "adopted": "resumed from a checkpoint without a run id",
            }
            (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
