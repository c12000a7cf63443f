"""Where and how a job computes: device, autocast dtype, gradient scaling, memory format.

PRECISION_AUTO picks, per device:
- CUDA: bf16 autocast where the GPU supports it, else fp16 autocast with a gradient scaler (AMP);
  channels_last for convolutional networks.
- CPU: measured by ``bench/train.py`` on this project's machines (see docs/): channels_last helps
  convolutional networks at ImageNet-like sizes; bf16 autocast only pays where the CPU has matrix
  units for it (AMX), so without AMX AUTO stays fp32.
Explicit FP32 / BF16 / FP16 are honoured as asked.

A job's ``recipe.devices`` > 1 runs data-parallel ranks (``services.trainer.distributed``): one GPU per
rank on CUDA, on CPU one process per rank (at most ``MAX_CPU_PROCESSES``); :func:`check_devices`
says whether this host can give a job what it asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import InvalidArgument
from common.models.zoo import ArchSpec

# Below this input side channels_last costs more (layout conversions) than it saves on CPU.
CHANNELS_LAST_MIN_SIZE = 128
# Data-parallel processes of one job on CPU (each process uses cores / ranks threads; more only adds overhead).
MAX_CPU_PROCESSES = 8


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None = fp32, no autocast
    channels_last: bool
    grad_scaler: bool

    def describe(self) -> str:
        dtype = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]
        return f"{self.device.type} {dtype}{' channels_last' if self.channels_last else ''}"


def cpu_has_amx() -> bool:
    """True when the CPU advertises AMX tiles for bf16 (Linux /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def resolve_runtime(precision: str, arch: ArchSpec, image_size: int, device: str | None = None) -> Runtime:
    """The runtime for a job; ``device`` None = CUDA when available, else CPU."""
    dev = default_device(device)
    convolutional = arch.attention is None
    if dev.type == "cuda":
        if precision == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        return Runtime(dev, dtype, convolutional, dtype is torch.float16)
    if precision == "auto":
        dtype = torch.bfloat16 if cpu_has_amx() else None
        channels_last = convolutional and image_size >= CHANNELS_LAST_MIN_SIZE
    else:
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        channels_last = convolutional and image_size >= CHANNELS_LAST_MIN_SIZE
    return Runtime(dev, dtype, channels_last, False)


def default_device(device: str | None = None) -> torch.device:
    """``device``, else CUDA when available, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def check_devices(devices: int, device: str | None = None) -> None:
    """Raise InvalidArgument unless this host can run a job on ``devices`` devices of ``device``'s type.

    CUDA: ranks use the visible GPUs from ``device``'s index on (``cuda`` = from 0), one GPU each.
    CPU: devices are processes, at most ``MAX_CPU_PROCESSES``. ``torch.cuda.device_count`` does not
    create a CUDA context, so the API server can call this at submit time.
    """
    if devices < 1:
        raise InvalidArgument(f"recipe.devices must be at least 1, got {devices}")
    if devices == 1:
        return
    dev = default_device(device)
    if dev.type == "cuda":
        visible = torch.cuda.device_count() - (dev.index or 0)
        if devices > visible:
            raise InvalidArgument(f"recipe.devices={devices} but this trainer sees {max(visible, 0)} CUDA device(s) "
                                  f"for the job")
    elif dev.type == "cpu":
        if devices > MAX_CPU_PROCESSES:
            raise InvalidArgument(f"recipe.devices={devices}: on CPU, devices are processes; at most "
                                  f"{MAX_CPU_PROCESSES}")
    else:
        raise InvalidArgument(f"recipe.devices={devices}: multi-device training runs on CUDA or CPU, not {dev.type}")
