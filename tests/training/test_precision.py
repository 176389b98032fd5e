"""The training speed options: `trainer.precision: auto` (bf16 mixed only where this machine measures it
clearly faster) and `model.compile` where no compiler runs."""

from __future__ import annotations

import time

import pytest
import torch

from omni.training import precision
from omni.training.cli import _training_device


@pytest.mark.parametrize(
    ("fp32", "bf16", "chosen"),
    [
        (0.15, 0.40, "bf16-mixed"),
        (0.39, 2.4, "bf16-mixed"),
        (0.15, 0.20, "32-true"),
        (0.18, 0.0004, "32-true"),
    ],
)
def test_bf16_is_chosen_only_where_its_matmuls_are_clearly_faster(monkeypatch, fp32, bf16, chosen):
    """Measured rates decide (AVX-512 BF16 host, AMX host, a small gain, an emulating host)."""
    rates = {torch.float32: fp32, torch.bfloat16: bf16}
    monkeypatch.setattr(
        precision, "matmul_tflops", lambda device, dtype, n, seconds, stop_below=0: rates[dtype]
    )
    choice = precision.choose_precision("cpu", n=64)
    assert choice.precision == chosen
    assert "precision auto -> " + chosen in str(choice) and "fp32" in str(choice)


def test_the_measurement_is_real_and_stops_at_one_matmul_where_a_dtype_is_slow():
    choice = precision.choose_precision("cpu", n=128, seconds=0.05)
    assert choice.fp32_tflops > 0 and choice.bf16_tflops > 0
    start = time.perf_counter()
    once = precision.matmul_tflops("cpu", torch.float32, 256, seconds=5.0, stop_below=1e9)
    assert 0 < once < 1e9 and time.perf_counter() - start < 2.0  # the 5 s of timing were skipped


def test_the_training_device_of_each_accelerator():
    assert _training_device("cpu") == "cpu" and _training_device("gpu") == "cuda"
    assert _training_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="set trainer.precision"):
        _training_device("mps")


def test_compiled_blocks_are_skipped_with_a_reason_where_no_compiler_runs():
    """model.compile on a CPU without a C++ compiler: a warning and eager blocks, not a crash at step 1."""
    import torch._inductor.config

    from omni.training.module import _compiler_missing

    assert _compiler_missing("cpu") is None  # every host we test has one
    with torch._inductor.config.patch({"cpp.cxx": (None, "/no/such/compiler")}):
        assert "no C++ compiler" in _compiler_missing("cpu")
    assert _compiler_missing("cpu") is None  # and the setting restored
