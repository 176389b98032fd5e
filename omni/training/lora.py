"""LoRA fine-tuning with peft: low-rank adapters on the Transformer's projections, merged back
into a plain release.

    omni train fit --config configs/shapes/sft.yaml --model.lora.rank 8

`add_lora` injects peft's LoRA layers (`peft.inject_adapter_in_model`) into the named linear
layers (the attention's `wqkv` and `wo`, the MLP's `w13` and `w2` by default) and leaves only
the adapters, and the parts `LoraSettings.train` names, trainable. `merged_state_dict` folds
each adapter into its weight (W + scale * B A, peft's own merge) on a copy and returns the state
dict under the plain names, so the release loads anywhere a release does, with no peft.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LoraSettings:
    """`model.lora`: where the adapters go and how big they are."""

    rank: int = 8
    """Rank of each adapter (B A with A: rank x in, B: out x rank)."""
    alpha: float = 16.0
    """Scale numerator: an adapter adds (alpha / rank) * B A to its weight."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    targets: list[str] = field(default_factory=lambda: ["wqkv", "wo", "w13", "w2"])
    """Linear layers (by name) that get adapters: the attention and MLP projections."""
    train: list[str] = field(default_factory=list)
    """Other weights trained in full, by name prefix: e.g. `[embedding, output]` when the run adds
    tokens to the vocabulary (conversations' <|chat|>), whose rows must learn."""

    def __post_init__(self):
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.targets:
            raise ValueError(
                f"model.lora: rank >= 1, alpha > 0, 0 <= dropout < 1 and some targets are needed, got "
                f"rank {self.rank}, alpha {self.alpha}, dropout {self.dropout}, targets {self.targets}"
            )


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError(
            "model.lora needs peft: pip install 'omni-multimodal[lora]' (or pip install peft)"
        ) from e
    return peft


def add_lora(model: nn.Module, settings: LoraSettings) -> int:
    """Inject LoRA adapters into `model` in place and freeze everything else but `settings.train`;
    returns the number of trainable parameters. ValueError when a target names no layer."""
    peft = _peft()
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = sorted(set(settings.targets) - names)
    if missing:
        raise ValueError(
            f"model.lora.targets {missing} name no linear layer; the model's are {sorted(names)}"
        )
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.targets,
    )
    peft.inject_adapter_in_model(config, model)
    trained = tuple(settings.train)
    known = {name.split(".")[0] for name, _ in model.named_parameters()}
    unknown = sorted(p for p in trained if p.split(".")[0] not in known)
    if unknown:
        raise ValueError(
            f"model.lora.train {unknown} names no weights; the model's parts are {sorted(known)}"
        )
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith(trained))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of `model` with every adapter merged into its weight, under the names the
    model has without adapters (`model` itself is left as it is)."""
    peft = _peft()
    merged = copy.deepcopy(model)
    for module in merged.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.merge()
    return {
        name.replace(".base_layer.", "."): tensor
        for name, tensor in merged.state_dict().items()
        if "lora_" not in name
    }
