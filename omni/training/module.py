"""The Lightning module that trains the unified Transformer: loss, optimiser, schedule, EMA, export.

It wraps a plain `omni.model.Transformer` built from the config's `Architecture` and the assets
the data module loaded (`omni.assets`, linked by `omni train`). Which task a token belongs to
comes with the batch (`omni.data.packing`), so per-task losses, weights and accuracies come from
`omni.training.loss` and the model never slices a batch by task. At every checkpoint and at the
end of training the model is exported as a release folder (`omni.checkpoint`) to `export_dir`.
"""

from __future__ import annotations

import copy
import logging
import warnings

import lightning as L
import torch

from omni.assets import Assets
from omni.attention import Visibility
from omni.checkpoint import load_initial_weights, save_pretrained
from omni.checks import check_number, check_numbers
from omni.generate import GENERATION_DEFAULTS
from omni.grammar import TASKS
from omni.model import Architecture, Transformer
from omni.release import RunOutputs
from omni.schedule import lr_factor, run_facts, time_limit_note, train_minutes
from omni.training.lora import LoraSettings, add_lora, merged_state_dict
from omni.training.loss import training_loss
from omni.understanding import load_encoder_weights

log = logging.getLogger("omni")


class OmniLitModule(L.LightningModule):
    """Trains the unified Transformer on packed multi-task batches.

    Args:
        transformer: the architecture (`omni.model.Architecture`); the assets complete it.
        assets: the text tokenizer and VQ (`omni.assets.Assets`), linked from the data module by
            `omni train`; their files are copied into releases.
        lr: peak learning rate (AdamW).
        min_lr_ratio: the cosine schedule ends at lr * min_lr_ratio.
        warmup_steps: linear warm-up from 0.
        decay_steps: length of the cosine decay in steps; 0 follows the trainer's max_steps, or
            else its max_time (the schedule then runs on wall time, which survives resuming).
        weight_decay: AdamW weight decay on matrices (not on norms).
        betas: AdamW betas.
        task_weights: loss weight per task (t2i, caption, vqa, lm); the loss is the weighted sum of
            each task's mean token loss.
        ema_decay: keep an exponential moving average of the weights with this decay and
            export it (0 disables; not with FSDP). Validation then scores the EMA weights as
            val/* (what is released) and the live ones as val_live/*.
        activation_checkpointing: recompute each block's activations in the backward pass.
        compile: torch.compile each Transformer block.
        export_dir: where the release folder is written (None: not exported).
        generation: generation defaults written into the release's config.json.
        encoder_weights: a local safetensors file of a pretrained ViT (timm's or open_clip's
            layout) to start the understanding encoder from (`understanding: encoder`); the
            encoder's config must match it (omni.understanding.load_encoder_weights).
        freeze: parts whose weights stay as they start: `encoder` (the understanding ViT),
            `connector`, `transformer` (everything else). LLaVA's stage 1 is [encoder, transformer]
            (only the connector learns), its stage 2 [encoder] (docs/encoder-and-interop.md).
        init_from: a model folder to start from (fine-tuning): an Omni release, or a Hugging Face
            LLM converted by `omni convert from-hf`. Its tokenizer and VQ must be data.tokenizer and
            data.vq; model.transformer must match its size; parts the config adds (an encoder,
            image positions, the appearance table) start fresh (omni.checkpoint.load_initial_weights).
        lora: train low-rank adapters (peft) instead of every weight; the release has them merged
            in (omni.training.lora). Not with FSDP.
    """

    def __init__(
        self,
        transformer: Architecture = Architecture(),  # noqa: B008 (a frozen-by-convention default)
        assets: Assets | None = None,
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
        encoder_weights: str | None = None,
        freeze: list[str] | None = None,
        init_from: str | None = None,
        lora: LoraSettings | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["assets"])
        if assets is None:
            raise ValueError("OmniLitModule needs the assets (omni train links them from the data module)")
        self.assets, self.vocab = assets, assets.vocab
        self.config = config = assets.model_config(transformer or Architecture())
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
        if config.image_features:
            self.model.code_features.copy_(assets.code_appearance())
        if init_from:
            fresh = load_initial_weights(self.model, self.vocab, init_from)
            log.warning(
                "started from the weights of %s%s",
                init_from,
                f"; new parts start fresh: {fresh[:3]}..." if fresh else "",
            )
        if encoder_weights:
            if self.model.understanding is None:
                raise ValueError(
                    "model.encoder_weights is set but the model reads images as codes; set "
                    "model.transformer.understanding: encoder"
                )
            load_encoder_weights(self.model.understanding.vit, encoder_weights)
        for part in freeze or []:
            for p in self.part_parameters(part):
                p.requires_grad_(False)
        if lora is not None:
            trainable = add_lora(self.model, lora)
            log.warning(
                "LoRA: %s of %s weights train",
                f"{trainable:,}",
                f"{sum(p.numel() for p in self.model.parameters()):,}",
            )
        self.ema = None
        if ema_decay > 0:
            self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.outputs = RunOutputs(export_dir, "model")
        self.step_metrics: dict[str, torch.Tensor] = {}

    def part_parameters(self, name: str) -> list[torch.nn.Parameter]:
        """The parameters of a part that `freeze` names."""
        understanding = self.model.understanding
        if name == "transformer":
            return [p for n, p in self.model.named_parameters() if not n.startswith("understanding.")]
        if name in ("encoder", "connector"):
            if understanding is None:
                raise ValueError(
                    f"model.freeze names {name!r}, but the model has no understanding encoder "
                    f"(model.transformer.understanding: codes)"
                )
            return list((understanding.vit if name == "encoder" else understanding.connector).parameters())
        raise ValueError(f"model.freeze: unknown part {name!r}; parts: encoder, connector, transformer")

    # ------------------------------------------------------------------------------------------
    # Setup

    def _fsdp(self) -> bool:
        return "FSDP" in type(self.trainer.strategy).__name__

    def configure_model(self) -> None:
        if self.hparams.activation_checkpointing:
            self.model.activation_checkpointing = True
        if self.hparams.compile:
            missing = _compiler_missing(self.trainer.strategy.root_device.type)
            if missing:
                warnings.warn(f"model.compile: {missing}; training runs the blocks uncompiled", stacklevel=2)
                return
            blocks = list(self.model.blocks)
            if self.model.understanding is not None:
                blocks += list(self.model.understanding.vit.blocks)
            for block in blocks:
                block.compile()

    def setup(self, stage: str) -> None:
        if self.ema is not None and self._fsdp():
            raise ValueError(
                "ema_decay > 0 is not supported with FSDP (the average would be of shards); set it to 0"
            )
        if self.hparams.lora is not None and self._fsdp():
            raise ValueError(
                "model.lora is not supported with FSDP; use DDP (strategy: ddp) or full fine-tuning"
            )

    def on_train_start(self) -> None:
        # After the checkpoint (and its run id) is restored, under FSDP too, before any step:
        # refuse outputs that would destroy something.
        inputs = {"data.vq": self.assets.vq_path, "the tokenizer": self.assets.tokenizer_path}
        self.outputs.check_at_start(self.trainer, inputs)

    def configure_optimizers(self):
        # Frozen parameters stay in the groups (AdamW skips those without a gradient), so a run
        # resumed with other parts frozen (LLaVA's stage 2 after stage 1) restores its optimiser.
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
    # The schedule (omni.schedule): warm-up, then cosine over steps or the time budget

    def on_train_batch_start(self, batch, batch_idx) -> None:
        h = self.hparams
        lr = h.lr * lr_factor(self.trainer, h.warmup_steps, h.decay_steps, h.min_lr_ratio)
        for group in self.optimizers().param_groups:
            group["lr"] = lr

    # ------------------------------------------------------------------------------------------
    # Steps

    def _step(self, batch: dict, stage: str, model: Transformer | None = None) -> torch.Tensor:
        """The weighted loss of `model` (default: the live weights) on a batch, logged under `stage`/."""
        model = self.model if model is None else model
        vis = Visibility(batch["doc"], batch["last"])
        logits = model(
            batch["tokens"], vis, positions=batch["positions"], image_index=batch["image_index"],
            read_pixels=batch.get("read_pixels"), read_at=batch.get("read_at"),
        )  # fmt: skip
        total, figures = training_loss(
            logits, batch["targets"], batch["task"], self.task_weights, self.config.z_loss
        )
        sync = stage != "train"  # validation figures are averaged over ranks
        for name, figure in figures.items():
            self.log(f"{stage}/{name}_loss", figure.loss, batch_size=figure.tokens, sync_dist=sync)
            self.log(f"{stage}/{name}_acc", figure.accuracy, batch_size=figure.tokens, sync_dist=sync)
        tokens = batch["tokens"].numel()
        self.log(f"{stage}/loss", total, prog_bar=stage != "val_live", batch_size=tokens, sync_dist=sync)
        if stage == "train":  # this step's own figures, for the progress lines
            self.step_metrics = {f"train/{n}_acc": f.accuracy.detach() for n, f in figures.items()}
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
        self.log("minutes", train_minutes(self.trainer), sync_dist=False)

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
        return merged_state_dict(source) if self.hparams.lora is not None else source.state_dict()

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
                self.assets,
                generation={"image_generation": self.config.image_generation}
                | GENERATION_DEFAULTS
                | (h.generation or {}),
                extra=run_facts(self.trainer) | {"trained_minutes": round(train_minutes(self.trainer), 2)},
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
        if self.trainer.is_global_zero:
            if note := time_limit_note(self.trainer):
                log.warning(note)
            if self.hparams.export_dir:
                log.warning("exported the model to %s", self.hparams.export_dir)


def _compiler_missing(device_type: str) -> str | None:
    """Why torch.compile cannot build kernels for `device_type` here (None: it can): inductor needs
    a C++ compiler for CPUs and Triton for GPUs, and would otherwise fail at the first step."""
    if device_type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as e:  # inductor's InvalidCxxCompiler, or the platform's own error
            return f"no C++ compiler for torch.compile ({str(e).splitlines()[0]})"
    elif device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton is not installed, and torch.compile needs it on a GPU"
    return None
