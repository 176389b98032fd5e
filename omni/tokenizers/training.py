"""Lightning training of the VQ-GAN: the module (generator + discriminator) and its data module.

The module wraps a plain `VQModel`; the GAN, perceptual and reconstruction losses come from
`omni.tokenizers.losses`. Optimisation is manual because the generator and the discriminator
step in turn. At every checkpoint and at the end of training the VQ is exported to
`export_dir` (config.json + model.safetensors, written atomically).
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch

from omni.checks import check_numbers
from omni.data.loader import image_text_loader
from omni.data.shards import expand_shards
from omni.release import RunOutputs
from omni.schedule import lr_factor, run_facts, time_limit_note
from omni.tokenizers.export import save_vq
from omni.tokenizers.losses import (
    PatchDiscriminator,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    make_perceptual,
    reconstruction_loss,
)
from omni.tokenizers.metrics import psnr, ssim
from omni.tokenizers.quantize import code_statistics
from omni.tokenizers.vqgan import VQConfig, VQModel

log = logging.getLogger("omni.tokenizers")


class VQLitModule(L.LightningModule):
    """Trains a VQ-GAN.

    Args:
        vq: architecture of the tokenizer (default: `VQConfig()`, the 32 px patch model).
        lr: peak learning rate of both optimisers (AdamW, betas (0.5, 0.9) for the GAN phase).
        warmup_steps: linear warm-up of the learning rate.
        min_lr_ratio: after warm-up the learning rate follows a cosine down to lr * min_lr_ratio
            over the run (trainer.max_steps, else max_time); 1.0 keeps it constant.
        weight_decay: AdamW weight decay (not applied to the codebook).
        l1_weight, l2_weight: pixel reconstruction weights.
        perceptual: `ssim` (weight-free), `lpips` (needs `perceptual_weights`, a local file) or `none`.
        perceptual_weight: weight of the perceptual loss.
        perceptual_weights: path of the LPIPS safetensors file (only for `perceptual: lpips`).
        disc_start: step at which the discriminator and the GAN loss start (-1: never).
        disc_weight: scale of the generator's GAN loss.
        adaptive_disc_weight: balance the GAN gradient against the reconstruction gradient at the
            decoder's last layer (taming); otherwise `disc_weight` is used as is.
        disc_channels, disc_layers: PatchGAN width and depth.
        grad_clip: gradient-norm clip for both optimisers (0 disables).
        export_dir: where the release folder (config.json + model.safetensors) is written.
    """

    def __init__(
        self,
        vq: VQConfig | None = None,
        lr: float = 2e-3,
        warmup_steps: int = 100,
        min_lr_ratio: float = 1.0,
        weight_decay: float = 0.0,
        l1_weight: float = 1.0,
        l2_weight: float = 1.0,
        perceptual: str = "none",
        perceptual_weight: float = 0.1,
        perceptual_weights: str | None = None,
        disc_start: int = -1,
        disc_weight: float = 0.1,
        adaptive_disc_weight: bool = True,
        disc_channels: int = 64,
        disc_layers: int = 2,
        grad_clip: float = 1.0,
        export_dir: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_numbers(
            "model",
            dict(self.hparams),
            {
                "lr": dict(above=0.0),
                "warmup_steps": dict(at_least=0, integer=True),
                "min_lr_ratio": dict(at_least=0.0, at_most=1.0),
                "weight_decay": dict(at_least=0.0),
                "l1_weight": dict(at_least=0.0),
                "l2_weight": dict(at_least=0.0),
                "perceptual_weight": dict(at_least=0.0),
                "disc_weight": dict(at_least=0.0),
                "disc_channels": dict(at_least=1, integer=True),
                "disc_layers": dict(at_least=1, integer=True),
                "grad_clip": dict(at_least=0.0),
            },
        )
        self.automatic_optimization = False
        self.vq = VQModel(vq or VQConfig())
        self.perceptual = make_perceptual(perceptual, perceptual_weights)
        self.discriminator = PatchDiscriminator(disc_channels, disc_layers) if disc_start >= 0 else None
        self._fit_start: float | None = None
        self.outputs = RunOutputs(export_dir, "vq")

    # ------------------------------------------------------------------------------------------
    def _gan_active(self) -> bool:
        return self.discriminator is not None and self.global_step >= self.hparams.disc_start

    def _last_layer(self) -> torch.Tensor:
        return [m for m in self.vq.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        optimizers = self.optimizers()
        opt_g, opt_d = optimizers if isinstance(optimizers, list) else (optimizers, None)
        x = batch["image"]
        rec, q = self.vq(x)
        rec_loss = reconstruction_loss(rec, x, hp.l1_weight, hp.l2_weight)
        if self.perceptual is not None:
            rec_loss = rec_loss + hp.perceptual_weight * self.perceptual(rec, x)
        loss = rec_loss + q.loss
        gan_active = self._gan_active()
        if gan_active:
            g_loss = hinge_g_loss(self.discriminator(rec))
            weight = hp.disc_weight
            if hp.adaptive_disc_weight:
                weight = weight * adaptive_gan_weight(rec_loss, g_loss, self._last_layer())
            loss = loss + weight * g_loss
            self.log("train/g_loss", g_loss.detach(), batch_size=len(x))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self._clip(opt_g)
        opt_g.step()
        if gan_active:
            d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(rec.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            self._clip(opt_d)
            opt_d.step()
            self.log("train/d_loss", d_loss.detach(), batch_size=len(x))
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)
        for scheduler in self._schedulers():
            scheduler.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"VQ loss became {loss.item()} at step {self.global_step}; lower lr or "
                f"resume from the last checkpoint"
            )
        self.log_dict(
            {
                "train/loss": loss.detach(),
                "train/rec_loss": rec_loss.detach(),
                "train/vq_loss": q.loss.detach(),
                "train/usage": q.stats["usage"],
                "train/perplexity": q.stats["perplexity"],
                "train/restarted": q.stats.get("restarted", torch.zeros(())),
            },
            prog_bar=False,
            batch_size=len(x),
        )
        self.log("psnr", psnr(rec.detach(), x).mean(), prog_bar=True, batch_size=len(x))

    def _schedulers(self) -> list:
        s = self.lr_schedulers()
        return [] if s is None else (s if isinstance(s, list) else [s])

    def _clip(self, optimizer) -> None:
        if self.hparams.grad_clip > 0:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm"
            )

    def validation_step(self, batch, batch_idx):
        x = batch["image"]
        q = self.vq.quantize(x)
        rec = self.vq.decoder(q.quantized)
        stats = code_statistics(q.codes, self.vq.config.codebook_size)
        metrics = {
            "val/psnr": psnr(rec, x).mean(),
            "val/ssim": ssim(rec, x).mean(),
            "val/usage": stats["usage"],
            "val/perplexity": stats["perplexity"],
            "minutes": torch.tensor((time.monotonic() - self._fit_start) / 60 if self._fit_start else 0.0),
        }
        self.log_dict(metrics, prog_bar=True, batch_size=len(x))
        return {"reconstruction": rec}  # for callbacks that judge it (omni.shapes.callbacks)

    def on_fit_start(self) -> None:
        self._fit_start = time.monotonic()

    def on_train_start(self) -> None:
        self.outputs.check_at_start(self.trainer, {})  # after the checkpoint restored the run id

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.vq.named_parameters():
            (no_decay if name.endswith("codebook") or p.ndim < 2 else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        opt_g = torch.optim.AdamW(groups, lr=hp.lr, betas=(0.9, 0.99))

        def factor(_: int) -> float:  # read from the trainer's step: a resumed run continues the curve
            return lr_factor(self.trainer, hp.warmup_steps, 0, hp.min_lr_ratio)

        optimizers = [opt_g]
        if self.discriminator is not None:
            optimizers.append(torch.optim.AdamW(self.discriminator.parameters(), lr=hp.lr, betas=(0.5, 0.9)))
        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]
        return optimizers, schedulers

    # ------------------------------------------------------------------------------------------
    def export(self) -> None:
        """Write the release folder (rank 0 only)."""
        self.outputs.export_pending = False
        if self.hparams.export_dir and self.trainer.is_global_zero:
            save_vq(
                self.vq,
                self.hparams.export_dir,
                extra=run_facts(self.trainer),
                run=self.outputs.run,
            )

    def on_save_checkpoint(self, checkpoint) -> None:
        self.outputs.save(checkpoint)
        self.outputs.export_pending = True  # exported once the checkpoint is written

    def on_load_checkpoint(self, checkpoint) -> None:
        self.outputs.load(checkpoint)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # ModelCheckpoint's hook (which saves) runs before this one: the release follows the
        # checkpoint on disk, so it is never ahead of last.ckpt.
        if self.outputs.export_pending:
            self.export()

    def on_train_end(self) -> None:
        self.export()
        if self.trainer.is_global_zero:
            if note := time_limit_note(self.trainer):
                log.warning(note)
            if self.hparams.export_dir:
                log.warning("exported the VQ tokenizer to %s", self.hparams.export_dir)


class ImageDataModule(L.LightningDataModule):
    """Image shards for tokenizer training; optionally decoded once into memory.

    Args:
        train_shards, val_shards: shard patterns (globs, brace ranges).
        resolution: image side (shorter side resized, centre-cropped).
        batch_size: per device.
        num_workers: DataLoader workers for streaming.
        batches_per_epoch: training batches per epoch (default: one pass over the data).
        val_batches: validation batches per validation run.
        in_memory: decode the training images once into a uint8 tensor and sample batches from
            it (fast for small data such as the 32 px shapes; the shards must fit in memory).
        seed: shuffling seed.
    """

    def __init__(
        self,
        train_shards: str = "data/shapes/train-*.tar",
        val_shards: str | None = "data/shapes/val-*.tar",
        resolution: int = 32,
        batch_size: int = 128,
        num_workers: int = 0,
        batches_per_epoch: int | None = None,
        val_batches: int = 4,
        in_memory: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_numbers(
            "data",
            dict(self.hparams),
            {
                "resolution": dict(at_least=8, integer=True),
                "batch_size": dict(at_least=1, integer=True),
                "num_workers": dict(at_least=0, integer=True),
                "batches_per_epoch": dict(at_least=1, integer=True),
                "val_batches": dict(at_least=0, integer=True),
            },
        )
        for pattern in (train_shards, val_shards):
            if pattern:
                expand_shards(pattern)  # a pattern that matches nothing fails now, not after validation
        self._images: torch.Tensor | None = None

    def _loader(self, shards, resampled: bool, batch_size: int, batches: int | None = None):
        hp = self.hparams
        return image_text_loader(
            shards, resolution=hp.resolution, batch_size=batch_size, num_workers=hp.num_workers,
            batches_per_epoch=batches, seed=hp.seed, resampled=resampled, require_caption=False,
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.hparams.in_memory and self._images is None:
            chunks = [b["image"] for b in self._loader(self.hparams.train_shards, False, 1024)]
            # uint8 keeps 4x less memory than float; batches are converted on the fly.
            self._images = torch.cat(chunks).add(1).mul(127.5).round().to(torch.uint8)
            log.warning("decoded %d training images into memory", len(self._images))

    def train_dataloader(self):
        hp = self.hparams
        if self._images is not None:
            n = len(self._images)
            per_epoch = hp.batches_per_epoch or math.ceil(n / hp.batch_size)
            rank = self.trainer.global_rank if self.trainer is not None else 0
            return InMemoryBatches(self._images, hp.batch_size, per_epoch, hp.seed + rank)  # ranks draw apart
        return self._loader(hp.train_shards, True, hp.batch_size, hp.batches_per_epoch)

    def val_dataloader(self):
        if not self.hparams.val_shards:
            return []
        return self._loader(self.hparams.val_shards, False, self.hparams.batch_size, self.hparams.val_batches)


class InMemoryBatches:
    """Random batches {"image": float [-1, 1]} drawn from a uint8 image tensor, a fixed number per epoch."""

    def __init__(self, images: torch.Tensor, batch_size: int, batches_per_epoch: int, seed: int = 0):
        self.images, self.batch_size, self.batches_per_epoch = images, batch_size, batches_per_epoch
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        for _ in range(self.batches_per_epoch):
            idx = torch.randint(0, len(self.images), (self.batch_size,), generator=self.generator)
            yield {"image": self.images[idx].float().div_(127.5).sub_(1.0)}
