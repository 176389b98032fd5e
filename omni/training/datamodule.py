"""The Lightning data module of the unified model: packed multi-task batches from code shards.

It loads the assets (`omni.assets`: the tokenizer and VQ, checked against the shards' recorded
VQ) that `omni train` hands to the model, and takes from the model what its batches depend on
(`connect`). The batches themselves come from `omni.data.packing`.
"""

from __future__ import annotations

import lightning as L

from omni.assets import Assets
from omni.checks import check_numbers
from omni.data.codes import check_code_shards, code_shard_keeps_images
from omni.data.packing import TaskBuilder, task_loader
from omni.data.shards import expand_shards, is_remote
from omni.grammar import GROUNDED_TASKS
from omni.model import ModelConfig


class OmniDataModule(L.LightningDataModule):
    """Packed multi-task batches from code shards (see omni.data.packing).

    Args:
        train_shards: code shards (brace pattern or glob, or a list of them), written by
            tokenizers/encode_shards.py; dialogue shards (omni.data.dialogue) may be among them.
        val_shards: held-out code shards, the same way (None: no validation).
        tokenizer: text tokenizer.json (tokenizers/train_text.py).
        vq: the VQ folder the shards were encoded with (its codebook size sets the vocabulary).
        seq_len: packed row length in tokens.
        batch_size: rows per batch (per device).
        batches_per_epoch: batches per epoch and rank (the stream is endless).
        val_batches: validation batches (each sample yields one document of every task).
        ratios: task mixing ratios over t2i, caption, vqa, lm; `chat` > 0 trains the conversations
            of dialogue samples (and adds their token to the vocabulary); gcap, ground, region and
            plan are the grounded tasks (omni.grammar), trained on the samples whose KEY.json has
            objects with boxes (and add location tokens to the vocabulary).
        location_bins: location tokens per axis when a grounded task has a ratio > 0: a box's
            corners are told to 1 / location_bins of the image side (omni.grounding).
        questions_per_image: questions one vqa, gvqa, ground or region document asks about its
            image, each answered before the next (as a multi-turn conversation): the image, most
            of such a document's tokens, then serves several answers.
        grounding_min_objects: the grounded tasks that read an image (gcap, ground, region, gvqa)
            draw only from images with at least this many objects (the others draw among the other
            tasks). With one object its box needs no name: a shortcut that holds back learning
            which name is which object (docs/experiments.md, "Grounding").
        caption_dropout: probability of an empty t2i caption (for classifier-free guidance).
        num_workers: loader worker processes.
        shuffle_buffer: samples in the shuffle buffer.
        seed: data order and task/mask sampling seed.
        max_caption_chars: longer captions are skipped and counted.
    """

    def __init__(
        self,
        train_shards: str | list[str],
        tokenizer: str,
        vq: str,
        val_shards: str | list[str] | None = None,
        seq_len: int = 256,
        batch_size: int = 16,
        batches_per_epoch: int = 1000,
        val_batches: int = 8,
        ratios: dict[str, float] | None = None,
        caption_dropout: float = 0.1,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        max_caption_chars: int = 2048,
        location_bins: int = 32,
        questions_per_image: int = 1,
        grounding_min_objects: int = 1,
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
                "location_bins": dict(at_least=2, integer=True),
                "questions_per_image": dict(at_least=1, integer=True),
                "grounding_min_objects": dict(at_least=1, integer=True),
            },
        )
        # Fails now, not after validation: a pattern that matches nothing, or shards that another
        # VQ encoded (codes of two tokenizers mean different things). One check: one VQ hash.
        self.ratios = ratios or {"t2i": 0.4, "caption": 0.3, "vqa": 0.2, "lm": 0.1}
        # Handed to the model by `omni train` (a link); conversations add their token to the vocabulary.
        grounded = any(self.ratios.get(task, 0) > 0 for task in GROUNDED_TASKS)
        self.assets = Assets.load(
            tokenizer,
            vq,
            conversations=self.ratios.get("chat", 0) > 0,
            locations=location_bins if grounded else 0,
        )
        urls = [u for p in (train_shards, val_shards) if p for u in expand_shards(p)]
        codebook_size = self.assets.vq_config.codebook_size
        check_code_shards(urls, vq, fingerprint=self.assets.fingerprint, codebook_size=codebook_size)
        self.image_generation: str | None = None  # the model's, when connected
        self.text_first = False  # the model's, when connected
        self.read_resolution = 0  # the model's understanding encoder's, when connected
        self.train_loader = self.val_loader = None

    def connect(self, config: ModelConfig) -> None:
        """Take what the batches depend on from the model being trained (litgpt's `connect`): how
        it generates images (a t2i document's targets) and reads them (codes, or pixels at its
        encoder's resolution), and check that rows fit its positions."""
        if self.hparams.seq_len > config.max_seq_len:
            raise ValueError(
                f"data.seq_len {self.hparams.seq_len} exceeds model.transformer.max_seq_len {config.max_seq_len}"
            )
        self.image_generation = config.image_generation
        self.text_first = config.text_first
        self.read_resolution = config.encoder.image_size if config.understanding == "encoder" else 0
        if self.read_resolution:
            # Fails now, not after 10,000 skipped samples: shards encoded without their images.
            h = self.hparams
            for pattern in (h.train_shards, h.val_shards):
                local = [u for u in expand_shards(pattern)[:1] if not is_remote(u)] if pattern else []
                if local and not code_shard_keeps_images(local[0]):
                    raise ValueError(
                        f"the model reads images with its understanding encoder (model.transformer.understanding: "
                        f"encoder), but the code shard {local[0]} keeps no image beside its codes; re-encode the "
                        f"shards without --no-images (tokenizers/encode_shards.py --vq {h.vq} --shards IMAGE_SHARDS "
                        f"--out FOLDER --overwrite), or set understanding: codes"
                    )

    def builder(self, caption_dropout: float | None = None) -> TaskBuilder:
        h = self.hparams
        if self.image_generation is None:
            raise RuntimeError(
                "connect the data module to the model's config first (Lightning does it in setup)"
            )
        dropout = h.caption_dropout if caption_dropout is None else caption_dropout
        return TaskBuilder(
            self.assets.vocab,
            self.assets.tokenizer,
            self.image_generation,
            dropout,
            self.read_resolution,
            resolution=self.assets.vq_config.resolution,
            text_first=self.text_first,
            questions_per_image=self.hparams.questions_per_image,
            grounding_min_objects=self.hparams.grounding_min_objects,
        )

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
        if lit is not None:
            self.connect(lit.config)

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
