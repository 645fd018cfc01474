"""Run one study step in a fresh Python process, so its memory goes back to the OS when it ends.

In one long process a step's freed memory mostly stays: torch's and glibc's
allocators keep pages, a loaded codec or speaker encoder lives on in module
caches, and fragmentation pins the heap. So every step started from the last
one's high-water mark (measured: SpeechTokenizer extraction began at 0.81 GB).
A step run here starts from a fresh interpreter and ends with its process: its
peak is its own, and a step killed by the OS (out of memory) is a failed step,
not a dead run.

The parent sends the child its ``sys.path`` (so both import the same codeclens
and the same plug-in modules) and a pickle of the study, the run directory, the
step id and the tokens of its inputs; the child plans the same study, finds the
step and runs its work. A pickled study carries its analyses' Config classes by
module, so unpickling imports the modules that register them (a plug-in or a
test module's analysis is found in the child too). The child reports on an
inherited pipe, one JSON object a line: ``log`` lines while it runs, then
``done`` (the step's info, the process' peak and start resident set) or
``error`` / ``interrupted``.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from ..errors import CodeclensError

#: Run in the child: take the parent's sys.path, then import and run :func:`_child`.
_BOOT = ("import sys, json; sys.path[:] = json.loads(sys.stdin.buffer.readline()); "
         "from codeclens.study.isolate import _child; _child()")


class StepFailed(Exception):
    """A step that failed in its own process: the message as the runner records it, the child's
    traceback, and the process' peak and start resident bytes when it could still say them."""

    def __init__(self, message: str, tb: str = "", peak: int | None = None, start: int | None = None):
        super().__init__(message)
        self.message = message
        self.traceback = tb
        self.peak = peak
        self.start = start


def available() -> bool:
    """Child processes with an inherited pipe: POSIX."""
    return os.name == "posix"


def run_step(study, root: Path, step_id: str, inputs: dict[str, str | None], progress: bool,
             log: Callable[[str], None]) -> tuple[dict[str, Any], int | None, int | None]:
    """Run step ``step_id`` of ``study`` in a new process: (info, peak resident bytes, resident bytes
    when its work began). Raises :class:`StepFailed` when it fails or dies, KeyboardInterrupt when it
    was interrupted."""
    payload = pickle.dumps({"study": study, "root": str(root), "step": step_id, "inputs": inputs,
                            "progress": progress})
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(w)], stdin=subprocess.PIPE, pass_fds=(w,))
    finally:
        os.close(w)
    final: dict[str, Any] | None = None
    try:
        with os.fdopen(r, "r") as msgs:
            try:
                proc.stdin.write(json.dumps(sys.path).encode() + b"\n" + payload)
                proc.stdin.close()
            except BrokenPipeError:  # died at start-up: its exit status says why
                pass
            for line in msgs:
                m = json.loads(line)
                if "log" in m:
                    log(m["log"])
                else:
                    final = m
        code = proc.wait()
    except BaseException:
        # Ctrl-C reaches the child too (same process group); give it a moment to stop cleanly.
        _stop(proc)
        raise
    if final is None:
        if code < 0:
            sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            why = " (out of memory?)" if -code == signal.SIGKILL else ""
            raise StepFailed(f"the step's process was killed by {sig}{why}")
        raise StepFailed(f"the step's process exited with status {code} without a result")
    if "interrupted" in final:
        raise KeyboardInterrupt
    if "error" in final:
        raise StepFailed(final["error"], final.get("traceback", ""), final.get("peak"), final.get("start"))
    return final["done"], final.get("peak"), final.get("start")


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((None, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the runner dies, so no orphan writes into a run another runner took over."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child() -> None:
    out = os.fdopen(int(sys.argv[1]), "w", buffering=1)

    def send(**m: Any) -> None:
        out.write(json.dumps(m, default=str) + "\n")

    _die_with_parent()
    try:
        code = _work(pickle.load(sys.stdin.buffer), send)
    finally:
        out.close()
    sys.exit(code)


def _work(p: dict[str, Any], send: Callable[..., None]) -> int:
    from ..util.figures import codec_order
    from ..util.heap import mmap_large_buffers
    from .rss import current_bytes
    from .steps import plan

    start = None
    try:
        mmap_large_buffers()
        study = p["study"]
        if study.meta.threads:
            import torch

            torch.set_num_threads(study.meta.threads)
        steps, ctx = plan(study, Path(p["root"]))
        step = next(s for s in steps if s.id == p["step"])
        ctx.inputs, ctx.progress = p["inputs"], p["progress"]
        ctx.log = lambda m: send(log=str(m))
        start = current_bytes()
        with codec_order(c.display for c in study.codecs):
            info = step.work(step, ctx) or {}
        send(done=info, peak=_own_peak(), start=start)
        return 0
    except KeyboardInterrupt:
        send(interrupted=True)
        return 130
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, CodeclensError):
            msg = f"{type(e).__name__}: {msg}"
        send(error=msg, traceback=traceback.format_exc(), peak=_own_peak(), start=start)
        return 1


def _own_peak() -> int:
    """This process' high-water mark: everything the step held, imports included, nothing else. VmHWM
    belongs to the address space exec gave it; getrusage's maximum would include the runner's resident
    set copied at fork (Linux carries it over exec), so it is only the fallback."""
    from .rss import _hwm_bytes, peak_bytes

    hwm = _hwm_bytes()
    return hwm if hwm is not None else peak_bytes(False)[0]
