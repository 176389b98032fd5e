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
