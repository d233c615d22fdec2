"""What `auto` picks for each device, and what the spec's explicit settings override."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.trainer.precision import DeviceInfo, choose_compute

CPU = DeviceInfo("cpu")


def gpu(capability: tuple[int, int]) -> DeviceInfo:
    """One NVIDIA GPU of the given compute capability."""
    return DeviceInfo("gpu", ("NVIDIA Test",), capability)


@pytest.mark.parametrize(("device", "precision", "xla"), [
    (CPU, "float32", False),
    (DeviceInfo("cpu", cpu_bfloat16=True), "mixed_bfloat16", False),
    (gpu((9, 0)), "mixed_bfloat16", True),
    (gpu((8, 0)), "mixed_bfloat16", True),
    (gpu((7, 5)), "mixed_float16", True),
    (gpu((7, 0)), "mixed_float16", True),
    (gpu((6, 1)), "float32", True),
], ids=["cpu", "cpu-bf16", "hopper", "ampere", "turing", "volta", "pascal"])
def test_auto_picks_by_device(device: DeviceInfo, precision: str, xla: bool) -> None:
    plan = choose_compute("auto", "auto", device)
    assert (plan.precision, plan.jit_compile) == (precision, xla)
    assert plan.pad_to_multiple == (8 if device.kind == "gpu" else 1)
    assert plan.reason and plan.device == device.describe()


def test_the_lowest_compute_capability_of_several_gpus_decides() -> None:
    device = DeviceInfo("gpu", ("A100", "V100"), min([(8, 0), (7, 0)]))
    assert choose_compute("auto", "auto", device).precision == "mixed_float16"


@pytest.mark.parametrize("precision", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("jit", [True, False])
def test_explicit_settings_win_on_any_device(precision: str, jit: bool) -> None:
    for device in (CPU, gpu((8, 0))):
        plan = choose_compute(precision, jit, device)
        assert (plan.precision, plan.jit_compile) == (precision, jit)
        assert "as the spec asks" in plan.reason


def test_cpu_reason_says_why_xla_is_off() -> None:
    assert "XLA off" in choose_compute("auto", "auto", CPU).reason
    assert choose_compute("auto", "auto", CPU).as_dict()["device"] == "CPU"


def test_cpu_bfloat16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    from service.trainer.precision import cpu_has_bfloat16

    with_bf16 = tmp_path / "with"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert cpu_has_bfloat16(str(with_bf16)) is True
    assert cpu_has_bfloat16(str(without)) is False
    assert cpu_has_bfloat16(str(tmp_path / "missing")) is False
