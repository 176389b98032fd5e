"""Lightning callbacks that score a training run on shapes data with the analyzer."""

from __future__ import annotations

import lightning as L
import torch

from omni.shapes.analyzer import judge_reconstructions


class SceneAccuracy(L.Callback):
    """Logs `val/scene_accuracy` of a VQ run: the fraction of validation reconstructions that the
    analyzer still reads as their scene (configs/shapes/vq.yaml adds it; other data: nothing logged)."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not isinstance(outputs, dict) or "reconstruction" not in outputs:
            return
        verdicts = judge_reconstructions(outputs["reconstruction"], batch.get("meta", []))
        if verdicts:
            accuracy = torch.tensor(sum(ok for _, ok in verdicts) / len(verdicts))
            pl_module.log("val/scene_accuracy", accuracy, prog_bar=True, batch_size=len(verdicts))


class RelationProbe(L.Callback):
    """Logs, at each validation, what the model answers when asked, greedily, on the first
    `scenes` two-object validation scenes: `val/relation_acc` ("where is A relative to B?", the
    binding figure of the shapes world) and, for a grounded model, `val/grounded_relation_acc`
    (the same questions answered through boxes, `gvqa`) and `val/grounding_acc` (the box of each
    object named, IoU >= 0.5). Reads the data module's validation code shards; scores the
    released weights (the EMA when there is one). configs/shapes/model.yaml adds it.

    Args:
        scenes: two-object validation scenes asked about.
        batch_size: prompts decoded at once.
    """

    def __init__(self, scenes: int = 128, batch_size: int = 64):
        if scenes < 1 or batch_size < 1:
            raise ValueError(f"RelationProbe needs scenes and batch_size >= 1, got {scenes}, {batch_size}")
        self.scenes, self.batch_size = scenes, batch_size
        self._samples: list[dict] | None = None

    def _load(self, trainer) -> list[dict]:
        from omni.data.loader import SkipCounter
        from omni.data.packing import decode_code_sample
        from omni.data.shards import iterate_samples

        shards = getattr(trainer.datamodule, "hparams", {}).get("val_shards") if trainer.datamodule else None
        samples = []
        for raw in iterate_samples(shards) if shards else []:
            sample = decode_code_sample(raw, SkipCounter())
            if sample and len(sample.get("objects", [])) == 2 and any(_is_relation(p) for p in sample["qa"]):
                samples.append(sample)
                if len(samples) == self.scenes:
                    break
        return samples

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self._samples is None:
            self._samples = self._load(trainer)
        if not self._samples:
            return
        from omni.generate import generate_text
        from omni.grammar import Grammar
        from omni.grounding import ids_box, iou, phrase_text, resized_box

        model = pl_module.ema if getattr(pl_module, "ema", None) is not None else pl_module.model
        vocab, encode = pl_module.vocab, pl_module.assets.tokenizer.encode
        grammar, res = Grammar(vocab, pl_module.config.text_first), pl_module.assets.vq_config.resolution
        was_training = model.training
        model.eval()
        asked = [(s, next(p for p in s["qa"] if _is_relation(p))) for s in self._samples]
        hits = []
        for chunk in _chunks(asked, self.batch_size):
            prompts = [
                grammar.prompt("vqa", image=s["codes"].tolist(), question=encode(p["question"]))
                for s, p in chunk
            ]
            answers = generate_text(model, vocab, prompts, max_new_tokens=4)
            hits += [encode(p["answer"]) == a for (_, p), a in zip(chunk, answers)]
        pl_module.log("val/relation_acc", sum(hits) / len(hits), batch_size=len(hits), rank_zero_only=True)
        if vocab.location_bins:
            # The same questions answered through boxes (gvqa): the named objects first, then the answer.
            sep = vocab.special("sep")
            allowed = vocab.text_id_mask() | vocab.location_id_mask()
            allowed[sep] = True
            hits = []
            for chunk in _chunks(asked, self.batch_size):
                prompts = [
                    grammar.prompt("gvqa", image=s["codes"].tolist(), question=encode(p["question"]))
                    for s, p in chunk
                ]
                rows = generate_text(model, vocab, prompts, max_new_tokens=16, allowed=allowed)
                answers = [row[row.index(sep) + 1 :] if sep in row else [] for row in rows]
                hits += [encode(p["answer"]) == a for (_, p), a in zip(chunk, answers)]
            pl_module.log(
                "val/grounded_relation_acc", sum(hits) / len(hits), batch_size=len(hits), rank_zero_only=True
            )
            cases = [(s, name, box) for s in self._samples for name, box in s["objects"]]
            found = []
            for chunk in _chunks(cases, self.batch_size):
                prompts = [
                    grammar.prompt("ground", image=s["codes"].tolist(), phrase=encode(phrase_text(n)))
                    for s, n, _ in chunk
                ]
                rows = generate_text(
                    model, vocab, prompts, max_new_tokens=4, allowed=vocab.location_id_mask()
                )
                for (s, _, box), row in zip(chunk, rows):
                    truth = resized_box(box, s.get("image_size") or (res, res), res)
                    found.append(
                        len(row) == 4
                        and truth is not None
                        and iou(ids_box(vocab, row, (res, res)), truth) >= 0.5
                    )
            pl_module.log(
                "val/grounding_acc", sum(found) / len(found), batch_size=len(found), rank_zero_only=True
            )
        model.train(was_training)


def _is_relation(pair: dict) -> bool:
    return " relative to " in pair.get("question", "")


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]
