"""Training precision chosen at run time, by measuring this machine rather than assuming it.

bf16 mixed precision pays where the hardware multiplies bf16 matrices fast (GPUs; CPUs with
AMX or AVX-512 BF16) and is ruinous where it does not (older CPUs emulate it: measured ~500x
slower than fp32 there). `choose_precision` times both dtypes' matmuls on the training device,
in this process, and picks `bf16-mixed` only where bf16 is clearly faster; `trainer.precision:
auto` (omni.training.cli.OmniTrainer) uses it and prints the figures behind the choice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# bf16 must beat fp32 matmuls by this much to be chosen: a training step also casts weights and
# runs element-wise work that bf16 does not speed up (measured on the shapes model, 2-core CPU
# with AVX-512 BF16: matmuls 2.9x faster, the whole step 1.4x).
BF16_MIN_GAIN = 1.5


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(
    device: torch.device | str, dtype: torch.dtype, n: int, seconds: float, stop_below: float = 0.0
) -> float:
    """Best TFLOP/s of n x n @ n x n matmuls over about `seconds` (at least one timed matmul).

    The first (warm-up) matmul is timed too: below `stop_below` TFLOP/s its rate is returned at
    once (where a dtype is emulated one matmul takes seconds, and one is enough to know).
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync(device)
    start = time.perf_counter()
    torch.mm(a, b)  # warm-up: kernels chosen, memory touched
    sync(device)
    first = 2 * n**3 / (time.perf_counter() - start) / 1e12
    if first < stop_below:
        return first
    best, deadline = 0.0, time.perf_counter() + seconds
    repeats = 4 if torch.device(device).type == "cpu" else 50
    while True:
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        sync(device)
        best = max(best, repeats * 2 * n**3 / (time.perf_counter() - start) / 1e12)
        if time.perf_counter() >= deadline:
            return best


@dataclass
class PrecisionChoice:
    precision: str  # a Lightning precision: "bf16-mixed" or "32-true"
    fp32_tflops: float
    bf16_tflops: float  # 0.0 where bf16 was not measured (unsupported, or too slow to finish)
    device: str

    def __str__(self) -> str:
        gain = self.bf16_tflops / self.fp32_tflops if self.fp32_tflops else 0.0
        return (
            f"precision auto -> {self.precision}: matmul on {self.device} fp32 {self.fp32_tflops:.3f} "
            f"TFLOP/s, bf16 {self.bf16_tflops:.3f} ({gain:.1f}x; bf16 is chosen at {BF16_MIN_GAIN}x or more)"
        )


def choose_precision(device: torch.device | str, n: int = 1024, seconds: float = 0.5) -> PrecisionChoice:
    """`bf16-mixed` where bf16 matmuls run at least BF16_MIN_GAIN x fp32's on `device`, else `32-true`."""
    device = torch.device(device)
    fp32 = matmul_tflops(device, torch.float32, n, seconds)
    bf16 = 0.0
    if device.type != "cuda" or torch.cuda.is_bf16_supported():
        # A cold first matmul is slower than the rest, but not 20x: that is emulation.
        bf16 = matmul_tflops(device, torch.bfloat16, n, seconds, stop_below=fp32 / 20)
    precision = "bf16-mixed" if bf16 >= BF16_MIN_GAIN * fp32 else "32-true"
    return PrecisionChoice(precision, fp32, bf16, str(device))
