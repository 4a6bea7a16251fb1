"""What a timing was measured on: the CPU model, AVX-512, whether oneDNN was on, the load.

TensorFlow's speed on a CPU depends most on whether its oneDNN kernels are on:
TensorFlow 2.21 turns them on by default on x86 CPUs with AVX-512 and leaves
them off elsewhere (e.g. AMD EPYC CPUs without AVX-512), and
`TF_ENABLE_ONEDNN_OPTS=0` / `=1` forces the choice. A training time or a
benchmark figure means little without these facts, so every benchmark and
training report records `machine_info()`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (`lscpu`'s "Model name"), or the platform's best guess."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def has_avx512() -> bool:
    """Whether the CPU has AVX-512 (the `avx512f` flag)."""
    return " avx512f" in _cpuinfo()


def onednn_enabled() -> bool:
    """Whether TensorFlow's oneDNN kernels are on: `TF_ENABLE_ONEDNN_OPTS` if set, else AVX-512."""
    value = os.environ.get(ONEDNN_ENV)
    if value is not None and value.strip() != "":
        return value.strip().lower() in ("1", "true", "yes", "on")
    return has_avx512()


def machine_info() -> dict:
    """A JSON-friendly summary of the machine, for reports of timings."""
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "avx512": has_avx512(),
        "onednn": onednn_enabled(),
        ONEDNN_ENV: os.environ.get(ONEDNN_ENV),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def describe_machine(info: dict | None = None) -> str:
    """One line, e.g. `Intel(R) Xeon(R) Processor, 2 CPUs, oneDNN on`."""
    info = info or machine_info()
    onednn = "on" if info["onednn"] else "off"
    return f"{info['cpu_model']}, {info['cpu_count']} CPUs, oneDNN {onednn}"
