"""Peak resident memory of one step of a run (the process' high-water mark, reset per step).

Linux keeps a resident-set high-water mark per process (``VmHWM`` in
``/proc/self/status``) and lets a process reset it to its current resident set
by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0). Resetting it before
a step and reading it after gives the peak *during that step*, which
``getrusage`` cannot (its ``ru_maxrss`` only ever grows). Where either file is
missing the peak is the process' lifetime maximum and is marked as such.
Child processes are not counted (the local engine encodes and labels in-process).
"""

from __future__ import annotations

import resource
import sys

_STATUS = "/proc/self/status"
_CLEAR = "/proc/self/clear_refs"


def _status_bytes(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _hwm_bytes() -> int | None:
    return _status_bytes("VmHWM")


def current_bytes() -> int | None:
    """The resident set now (None where /proc is missing)."""
    return _status_bytes("VmRSS")


def reset_peak() -> bool:
    """Reset the high-water mark to the current resident set; False when the OS cannot."""
    try:
        with open(_CLEAR, "w") as f:
            f.write("5")
    except OSError:
        return False
    return _hwm_bytes() is not None


def peak_bytes(was_reset: bool) -> tuple[int, str]:
    """(peak resident bytes, what it covers: ``step`` after a reset, else ``process``)."""
    hwm = _hwm_bytes() if was_reset else None
    if hwm is not None:
        return hwm, "step"
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb if sys.platform == "darwin" else kb * 1024), "process"
