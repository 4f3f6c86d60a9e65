"""Devices and arithmetic precision of training and extraction: fp32, or bfloat16 autocast where the device
runs it natively; what a device is, for the record of every run.

Side-effect free (no environment or thread settings), so every stage can import it.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")


def bf16_native(device: str) -> bool:
    """True where bfloat16 matmuls run natively: CUDA GPUs with bf16 (Ampere+), CPUs with AVX512-BF16 or AMX."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: str) -> str:
    """``fp32`` | ``bf16`` | ``auto`` (bf16 where native, else fp32) -> ``fp32`` | ``bf16``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    if precision == "bf16" and not bf16_native(device):
        log.warning("precision bf16 on %s without native bfloat16 support: emulated, likely slower than fp32", device)
    return precision


def autocast(device: str, precision: str) -> torch.autocast:
    """bfloat16 autocast for ``precision == "bf16"``, a disabled context otherwise."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def describe_device(device: str | torch.device) -> str:
    """What ran a job, for run records: the GPU's name (``cuda:0 NVIDIA H100 80GB HBM3``) or the CPU model and
    the threads torch uses (``cpu AMD EPYC 9B45, 2 threads``)."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{dev.type} {model}, {torch.get_num_threads()} threads"
