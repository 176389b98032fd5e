"""Lightning training of the unified Transformer: the module (losses, optimiser, EMA, release
export) and the data module (task mixing and packing over code shards).

The module wraps a plain `omni.model.Transformer`; which task a token belongs to comes with the
batch (see `omni.data.tasks`), so per-task losses, weights and accuracies live here and the
model never slices a batch by task. At every checkpoint and at the end of training the model is
exported as a release folder (`omni.checkpoint`) to `export_dir`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from omni.attention import Visibility
from omni.checkpoint import save_pretrained
from omni.checks import check_number, check_numbers
from omni.data.shards import expand_shards
from omni.data.tasks import TASKS, TaskBuilder, task_loader
from omni.generate import GENERATION_DEFAULTS
from omni.model import IGNORE, ModelConfig, Transformer, token_losses
from omni.release import RunOutputs
from omni.tokenizers.codes import check_code_shards
from omni.tokenizers.export import load_vq, read_vq_config
from omni.tokenizers.text import TextTokenizer
from omni.vocab import Vocab

log = logging.getLogger("omni")


def resolve_image_fields(
    config: ModelConfig, vocab: Vocab, vq: str | None
) -> tuple[ModelConfig, torch.Tensor | None]:
    """Fill the config's VQ-derived fields (-1 / 0) and check the given ones against the VQ folder.

    Returns the config and, when `image_features` is on, the VQ's code appearance table.
    """
    if not (config.image_positions or config.image_features):
        return config, None
    if not vq:
        raise ValueError("image_positions / image_features need the VQ folder (data.vq)")
    vq_config = read_vq_config(vq)
    codes_per_image = (vq_config.resolution // vq_config.downsample) ** 2
    features = 3 * vq_config.downsample**2
    wanted = {
        "image_positions": codes_per_image,
        "image_features": features,
        "image_codes": vocab.codebook_size,
    }
    changes = {}
    for name, value in wanted.items():
        given = getattr(config, name)
        derived = given == 0 if name == "image_codes" else given == -1
        if derived:
            changes[name] = value
        elif given and given != value:
            fix = (
                "set it to 0 to take the vocabulary's codebook size"
                if name == "image_codes"
                else "set it to -1 to take it from the VQ, or 0 to turn it off"
            )
            raise ValueError(
                f"transformer.{name} {given} disagrees with the VQ at {vq} (which needs {value}); {fix}"
            )
    config = dataclasses.replace(config, **changes)
    if not config.image_features:
        return dataclasses.replace(config, image_codes=0), None
    return config, load_vq(vq).code_appearance()


class OmniLitModule(L.LightningModule):
    """Trains the unified Transformer on packed multi-task batches.

    Args:
        transformer: architecture (`omni.model.ModelConfig`); vocab_size 0 takes it from the vocabulary.
        vocab: the unified vocabulary (linked from the data module by train.py).
        tokenizer: path of the text tokenizer.json (linked from the data module; copied into releases).
        vq: path of the VQ folder (linked from the data module; copied into releases).
        lr: peak learning rate (AdamW).
        min_lr_ratio: the cosine schedule ends at lr * min_lr_ratio.
        warmup_steps: linear warm-up from 0.
        decay_steps: length of the cosine decay in steps; 0 follows the trainer's max_steps, or
            else its max_time (the schedule then runs on wall time, which survives resuming).
        weight_decay: AdamW weight decay on matrices (not on norms).
        betas: AdamW betas.
        task_weights: loss weight per task (t2i, mmu, vqa, lm); the loss is the weighted sum of
            each task's mean token loss.
        ema_decay: keep an exponential moving average of the weights with this decay and
            export it (0 disables; not with FSDP). Validation then scores the EMA weights as
            val/* (what is released) and the live ones as val_live/*.
        activation_checkpointing: recompute each block's activations in the backward pass.
        compile: torch.compile each Transformer block.
        export_dir: where the release folder is written (None: not exported).
        generation: generation defaults written into the release's config.json.
    """

    def __init__(
        self,
        transformer: ModelConfig = ModelConfig(),  # noqa: B008 (a frozen-by-convention default)
        vocab: Vocab | None = None,
        tokenizer: str | None = None,
        vq: str | None = None,
        lr: float = 3e-3,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 100,
        decay_steps: int = 0,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        task_weights: dict[str, float] | None = None,
        ema_decay: float = 0.0,
        activation_checkpointing: bool = False,
        compile: bool = False,
        export_dir: str | None = None,
        generation: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["vocab"])
        if vocab is None:
            raise ValueError("OmniLitModule needs the vocabulary (train.py links it from the data module)")
        config = transformer or ModelConfig()
        if config.vocab_size == 0:
            config = dataclasses.replace(config, vocab_size=vocab.size)
        elif config.vocab_size != vocab.size:
            raise ValueError(
                f"transformer.vocab_size {config.vocab_size} disagrees with the vocabulary of the data "
                f"({vocab.size} ids: {vocab.text_size} text + specials + {vocab.codebook_size} codes); set it to 0"
            )
        config, appearance = resolve_image_fields(config, vocab, vq)
        self.config, self.vocab = config, vocab
        self.task_weights = {t: 1.0 for t in TASKS} | (task_weights or {})
        unknown = sorted(set(self.task_weights) - set(TASKS))
        if unknown:
            raise ValueError(f"task_weights has unknown tasks {unknown}; tasks are {TASKS}")
        h = self.hparams
        check_numbers(
            "model",
            dict(h),
            {
                "lr": dict(above=0.0),
                "min_lr_ratio": dict(at_least=0.0, at_most=1.0),
                "warmup_steps": dict(at_least=0, integer=True),
                "decay_steps": dict(at_least=0, integer=True),
                "weight_decay": dict(at_least=0.0),
                "ema_decay": dict(at_least=0.0, below=1.0),
            },
        )
        for i, beta in enumerate(betas):
            check_number(f"model.betas[{i}]", beta, at_least=0.0, below=1.0)
        for name, weight in self.task_weights.items():
            check_number(f"model.task_weights.{name}", weight, at_least=0.0)
        self.model = Transformer(config)
        if appearance is not None:
            self.model.code_features.copy_(appearance)
        self.ema = None
        if ema_decay > 0:
            self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.outputs = RunOutputs(export_dir, "model")
        self.step_metrics: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------
    # Setup

    def _fsdp(self) -> bool:
        return "FSDP" in type(self.trainer.strategy).__name__

    def configure_model(self) -> None:
        if self.hparams.activation_checkpointing:
            self.model.activation_checkpointing = True
        if self.hparams.compile:
            for block in self.model.blocks:
                block.compile()

    def setup(self, stage: str) -> None:
        if self.ema is not None and self._fsdp():
            raise ValueError(
                "ema_decay > 0 is not supported with FSDP (the average would be of shards); set it to 0"
            )

    def on_train_start(self) -> None:
        # After the checkpoint (and its run id) is restored, under FSDP too, before any step:
        # refuse outputs that would destroy something.
        h = self.hparams
        self.outputs.check_at_start(self.trainer, {"data.vq": h.vq, "the tokenizer": h.tokenizer})

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=self.hparams.lr, betas=tuple(self.hparams.betas), fused=fused)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        if gradient_clip_val and self._fsdp():
            # Lightning's FSDP precision plugin cannot clip by norm; the FSDP root module can.
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------------------------------
    # The schedule: warm-up, then cosine over steps or over the run's time budget

    def _timer(self) -> Timer | None:
        return next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)

    def train_minutes(self) -> float:
        timer = self._timer()
        return (timer.time_elapsed("train") if timer else 0.0) / 60

    def progress(self) -> float:
        """Fraction of the run done, for the cosine decay (0..1)."""
        step, h = self.global_step, self.hparams
        if h.decay_steps > 0:
            return min(1.0, step / h.decay_steps)
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return min(1.0, step / self.trainer.max_steps)
        timer = self._timer()
        if timer is not None and timer.time_remaining("train") is not None:
            elapsed = timer.time_elapsed("train")
            return min(1.0, elapsed / max(elapsed + timer.time_remaining("train"), 1e-9))
        return 0.0

    def lr_factor(self) -> float:
        h = self.hparams
        if self.global_step < h.warmup_steps:
            return (self.global_step + 1) / h.warmup_steps
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress()))
        return h.min_lr_ratio + (1 - h.min_lr_ratio) * cosine

    def on_train_batch_start(self, batch, batch_idx) -> None:
        lr = self.hparams.lr * self.lr_factor()
        for group in self.optimizers().param_groups:
            group["lr"] = lr

    # ------------------------------------------------------------------------------------------
    # Steps

    def _step(self, batch: dict, stage: str, model: Transformer | None = None) -> torch.Tensor:
        """The weighted loss of `model` (default: the live weights) on a batch, logged under `stage`/."""
        model = self.model if model is None else model
        vis = Visibility(batch["doc"], batch["last"])
        logits = model(batch["tokens"], vis, positions=batch["positions"], image_index=batch["image_index"])
        targets = batch["targets"]
        losses = token_losses(logits, targets)
        sync = stage != "train"  # validation figures are averaged over ranks
        if stage == "train":
            self.step_metrics = {}  # this step's own figures, for the progress lines
        task = batch["task"][targets != IGNORE]
        total = self.config.z_loss * losses.lse_sq.mean() if self.config.z_loss else logits.new_zeros(())
        for i, name in enumerate(TASKS):
            selected = task == i
            n = int(selected.sum())
            if n == 0:
                continue
            loss = losses.ce[selected].mean()
            accuracy = losses.correct[selected].float().mean()
            total = total + self.task_weights[name] * loss
            self.log(f"{stage}/{name}_loss", loss, batch_size=n, sync_dist=sync)
            self.log(f"{stage}/{name}_acc", accuracy, batch_size=n, sync_dist=sync)
            if stage == "train":
                self.step_metrics[f"train/{name}_acc"] = accuracy.detach()
        tokens = batch["tokens"].numel()
        self.log(f"{stage}/loss", total, prog_bar=stage != "val_live", batch_size=tokens, sync_dist=sync)
        if stage == "train":
            self.step_metrics["train/loss"] = total.detach()
        return total

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at step {self.global_step}; lower the learning rate or enable "
                f"qk_norm / z_loss, and resume from the last checkpoint (--ckpt_path last)"
            )
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=1)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # A checkpoint saved by this step (ModelCheckpoint's hook runs before this one) is on disk
        # now; the release follows it, with the same weights, so it is never ahead of last.ckpt.
        if self.outputs.export_pending:
            self.export()
        if self.ema is not None:
            d = self.hparams.ema_decay
            ema, live = list(self.ema.parameters()), list(self.model.parameters())
            torch._foreach_lerp_(ema, [p.detach() for p in live], 1 - d)

    def validation_step(self, batch, batch_idx):
        if self.ema is None:
            self._step(batch, "val")
            return
        # The release holds the EMA weights, so val/* scores those; the live weights (what the
        # optimiser steps) are logged apart as val_live/*.
        self._step(batch, "val", self.ema)
        self._step(batch, "val_live")

    def on_validation_end(self) -> None:
        if self.outputs.export_pending:  # a checkpoint saved at validation end (callbacks run first)
            self.export()

    def on_validation_epoch_end(self) -> None:
        self.log("minutes", self.train_minutes(), sync_dist=False)

    # ------------------------------------------------------------------------------------------
    # Release folder

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The (EMA) weights on every rank's call; under FSDP this gathers the shards (collective)."""
        if self._fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            # Gather from the wrapped root (this LightningModule) and keep the Transformer's entries.
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            full = get_model_state_dict(self.trainer.strategy.model, options=options)
            return {k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")}
        source = self.ema if self.ema is not None else self.model
        return source.state_dict()

    def export(self) -> None:
        h = self.hparams
        self.outputs.export_pending = False
        if not h.export_dir:
            return
        state = self._full_state_dict()
        if self.trainer.is_global_zero:
            save_pretrained(
                h.export_dir,
                state,
                self.config,
                self.vocab,
                h.tokenizer,
                h.vq,
                generation={"image_generation": self.config.image_generation}
                | GENERATION_DEFAULTS
                | (h.generation or {}),
                extra={
                    "trained_steps": int(self.global_step),
                    "trained_minutes": round(self.train_minutes(), 2),
                },
                run=self.outputs.run,
            )

    def on_save_checkpoint(self, checkpoint) -> None:
        checkpoint["omni_vocab"] = self.vocab.to_dict()
        self.outputs.save(checkpoint)
        self.outputs.export_pending = True  # exported once the checkpoint is written (on_train_batch_end)

    def on_load_checkpoint(self, checkpoint) -> None:
        # Resuming with another tokenizer or VQ would fail inside torch on mismatched shapes, or
        # worse, load silently with every id meaning something else.
        theirs = checkpoint.get("omni_vocab")
        if theirs is not None and theirs != self.vocab.to_dict():
            ours = self.vocab
            raise ValueError(
                f"the checkpoint was trained with another vocabulary ({theirs.get('text_size')} text ids, "
                f"{theirs.get('codebook_size')} image codes) than data.tokenizer / data.vq give now "
                f"({ours.text_size} text ids, {ours.codebook_size} codes); resume with the tokenizer.json "
                f"and VQ folder the run started with"
            )
        # (FSDP restores its sharded weights itself: its checkpoint dict holds no state_dict.)
        theirs_state = checkpoint.get("state_dict") if not self._fsdp() else None
        ours = self.state_dict() if theirs_state is not None else {}
        theirs_state = theirs_state or {}
        differ = [
            f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}"
            for k, v in theirs_state.items()
            if k in ours and hasattr(v, "shape") and v.shape != ours[k].shape
        ]
        missing = sorted(set(ours) - set(theirs_state))
        if differ or missing:
            raise ValueError(
                f"the checkpoint holds another architecture than model.transformer gives now "
                f"({(differ or missing)[:2]}); resume with the config the run was started with "
                f"(its config.yaml beside the logs), or start a new run"
            )
        self.outputs.load(checkpoint)

    def on_train_end(self) -> None:
        self.export()
        if self.hparams.export_dir and self.trainer.is_global_zero:
            log.warning("exported the model to %s", self.hparams.export_dir)


class OmniDataModule(L.LightningDataModule):
    """Packed multi-task batches from code shards (see omni.data.tasks).

    Args:
        train_shards: code shards (brace pattern or glob), written by tokenizers/encode_shards.py.
        val_shards: held-out code shards (None: no validation).
        tokenizer: text tokenizer.json (tokenizers/train_text.py).
        vq: the VQ folder the shards were encoded with (its codebook size sets the vocabulary).
        seq_len: packed row length in tokens.
        batch_size: rows per batch (per device).
        batches_per_epoch: batches per epoch and rank (the stream is endless).
        val_batches: validation batches (each sample yields one document of every task).
        ratios: task mixing ratios over t2i, mmu, vqa, lm.
        caption_dropout: probability of an empty t2i caption (for classifier-free guidance).
        image_generation: mask or ar (train.py links it from model.transformer.image_generation).
        num_workers: loader worker processes.
        shuffle_buffer: samples in the shuffle buffer.
        seed: data order and task/mask sampling seed.
        max_caption_chars: longer captions are skipped and counted.
    """

    def __init__(
        self,
        train_shards: str,
        tokenizer: str,
        vq: str,
        val_shards: str | None = None,
        seq_len: int = 256,
        batch_size: int = 16,
        batches_per_epoch: int = 1000,
        val_batches: int = 8,
        ratios: dict[str, float] | None = None,
        caption_dropout: float = 0.1,
        image_generation: str = "mask",
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        max_caption_chars: int = 2048,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_numbers(
            "data",
            dict(self.hparams),
            {
                "seq_len": dict(at_least=8, integer=True),
                "batch_size": dict(at_least=1, integer=True),
                "batches_per_epoch": dict(at_least=1, integer=True),
                "val_batches": dict(at_least=0, integer=True),
                "caption_dropout": dict(at_least=0.0, at_most=1.0),
                "num_workers": dict(at_least=0, integer=True),
                "shuffle_buffer": dict(at_least=0, integer=True),
                "max_caption_chars": dict(at_least=1, integer=True),
            },
        )
        # Fails now, not after validation: a pattern that matches nothing, or shards that another
        # VQ encoded (codes of two tokenizers mean different things). One check: one VQ hash.
        check_code_shards([u for p in (train_shards, val_shards) if p for u in expand_shards(p)], vq)
        self.text_tokenizer = TextTokenizer.from_file(tokenizer)
        codebook_size = read_vq_config(vq).codebook_size
        self.vocab = Vocab.build(self.text_tokenizer, codebook_size)
        self.ratios = ratios or {"t2i": 0.4, "mmu": 0.3, "vqa": 0.2, "lm": 0.1}
        self.train_loader = self.val_loader = None

    def builder(self, caption_dropout: float | None = None) -> TaskBuilder:
        h = self.hparams
        dropout = h.caption_dropout if caption_dropout is None else caption_dropout
        return TaskBuilder(self.vocab, self.text_tokenizer, h.image_generation, dropout)

    def _loader(self, shards: str, train: bool):
        h = self.hparams
        rank = self.trainer.global_rank if self.trainer else 0
        return task_loader(
            shards,
            self.builder() if train else self.builder(caption_dropout=0.0),
            ratios=self.ratios,
            seq_len=h.seq_len,
            batch_size=h.batch_size,
            batches_per_epoch=h.batches_per_epoch if train else h.val_batches,
            num_workers=h.num_workers,
            seed=h.seed if train else h.seed + 1000 * rank + 1,
            resampled=train,
            shuffle_buffer=h.shuffle_buffer if train else 0,
            every_task=not train,
            max_caption_chars=h.max_caption_chars,
        )

    def setup(self, stage: str | None = None) -> None:
        lit = self.trainer.lightning_module if self.trainer else None
        if lit is not None and self.hparams.seq_len > lit.config.max_seq_len:
            raise ValueError(
                f"data.seq_len {self.hparams.seq_len} exceeds model.transformer.max_seq_len {lit.config.max_seq_len}"
            )

    def train_dataloader(self):
        if self.train_loader is None:
            self.train_loader = self._loader(self.hparams.train_shards, train=True)
        # Resuming at epoch e must not replay epoch 0's order.
        self.train_loader.set_epoch(self.trainer.current_epoch if self.trainer else 0)
        return self.train_loader

    def val_dataloader(self):
        if not self.hparams.val_shards:
            return []
        return self._loader(self.hparams.val_shards, train=False)
