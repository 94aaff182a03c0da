"""What every bench figure is measured on: a timing means nothing without its machine."""

import os
import platform

from aimo_lib.engines.cpu import cpu_summary


def machine() -> str:
    """CPU model, cores, AVX-512 or not, Python, and the 1-minute load average now."""
    return (f"{cpu_summary()}, Python {platform.python_version()}, "
            f"load {os.getloadavg()[0]:.1f}")
