"""What machine a benchmark ran on: CPU model and the instruction sets that change speed.

Machines of this project vary from session to session (AVX2 only, or AVX-512 with
VNNI, BF16 and AMX), so every benchmark's JSON records this, and figures are only
compared within one run on one CPU.
"""

from __future__ import annotations

import os
import platform

FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                     "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    """``{"model", "cpus", "flags": {flag: bool}, "python", "platform"}`` of this machine."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if model != "unknown" and flags:
                    break
    except OSError:
        pass
    return {"model": model, "cpus": os.cpu_count(),
            "flags": {flag: flag in flags for flag in FLAGS_THAT_MATTER},
            "python": platform.python_version(), "platform": platform.platform()}


def describe(info: dict | None = None) -> str:
    """One line: model, CPU count and the flags present."""
    info = info or cpu_info()
    present = [f for f, on in info["flags"].items() if on]
    return f"{info['model']}, {info['cpus']} CPUs, {' '.join(present) or 'no AVX2'}"
