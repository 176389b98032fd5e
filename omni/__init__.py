"""Omni: one Transformer over text tokens and VQ-GAN image codes."""
