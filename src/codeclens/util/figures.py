"""One look for every figure: the style file, one colour per codec, every format a paper needs.

Every analysis saves its figures through :func:`save_figure`, so a run's
figures share a style (``data/styles/codeclens.mplstyle``, or the file named by
``CODECLENS_MPLSTYLE``), a codec keeps its colour in every figure of a run
(:func:`codec_color`, assigned from the study's codec order), and each figure
is written as PNG (for the report), SVG and PDF (for papers). ``codeclens
figures RUN`` re-renders a finished run through the same path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Sequence

DEFAULT_FORMATS = ("png", "svg", "pdf")
PNG_DPI = 150
FORMATS_ENV = "CODECLENS_FIG_FORMATS"
STYLE_ENV = "CODECLENS_MPLSTYLE"
ORDER_ENV = "CODECLENS_CODEC_ORDER"
"""Codec display names in study order, joined by a newline: the study runner sets it so every
figure of a run gives the same codec the same colour."""

PALETTE = ("#1f5ea8", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#e6ab02",
           "#17becf", "#666666")
"""Colour-blind-friendly qualitative colours (Dark2 with a stronger blue), one per codec."""
CONTROL_STYLE = {"ls": "--", "alpha": 0.75}
"""How a random-weight control's curve differs from a trained codec's."""


def style_path() -> str:
    env = os.environ.get(STYLE_ENV)
    if env:
        return env
    return str(resources.files("codeclens") / "data" / "styles" / "codeclens.mplstyle")


def use_style() -> None:
    """Apply the style file to matplotlib's global settings (idempotent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.style.use(style_path())


def formats() -> tuple[str, ...]:
    env = os.environ.get(FORMATS_ENV, "")
    got = tuple(f.strip().lower().lstrip(".") for f in env.split(",") if f.strip())
    return got or DEFAULT_FORMATS


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` within the block (environment, so worker processes see it too)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def figure_formats(fmts: Sequence[str]):
    """Within the block, :func:`save_figure` writes these formats (PNG is always written:
    the report shows it)."""
    return _env(FORMATS_ENV, ",".join(dict.fromkeys(["png", *fmts])))


def codec_order(names: Iterable[str]):
    """Within the block, :func:`codec_color` assigns colours in this order."""
    return _env(ORDER_ENV, "\n".join(names))


def codec_color(name: str, among: Sequence[str] = ()) -> str:
    """The colour of a codec: by its place in the run's codec order (set by the study runner),
    then by its place in ``among`` (the codecs of this figure) after those, else by a stable
    hash of its name; so within a run one codec never changes colour between figures."""
    order = [n for n in os.environ.get(ORDER_ENV, "").split("\n") if n]
    order += [n for n in among if n not in order]
    if name in order:
        return PALETTE[order.index(name) % len(PALETTE)]
    h = int(hashlib.blake2b(name.encode(), digest_size=4).hexdigest(), 16)
    return PALETTE[(len(order) + h) % len(PALETTE)]


def tight_bbox(fig):
    """The padded tight bounding box (inches) ``savefig(bbox_inches="tight")`` would crop to.

    Measured once per figure and given to every format's ``savefig``: "tight" lays out every
    text of the figure again for each format (in a profile of the probe figures, about a sixth
    of their saving time; it does not show in a whole ``layer:k`` run's total).
    """
    import matplotlib

    pad = matplotlib.rcParams["savefig.pad_inches"]
    # Text extents depend on the dpi (hinting): measure at the PNG's, as savefig would.
    old = fig.dpi
    fig.set_dpi(PNG_DPI)
    try:
        return fig.get_tightbbox(fig.canvas.get_renderer()).padded(pad)
    finally:
        fig.set_dpi(old)


FORK_ENV = "CODECLENS_FIG_FORK"
"""Set to 0 to write a figure's formats one after the other in this process (see :func:`save_figure`)."""


def _fork_ok() -> bool:
    # Linux only: fork without exec is unsafe beside macOS' system frameworks, and Windows has none.
    return sys.platform.startswith("linux") and os.environ.get(FORK_ENV, "1") != "0"


def _write(fig, target: Path, ext: str, bbox) -> None:
    from .atomic import atomic_path

    with atomic_path(target, f".{ext}") as tmp:
        fig.savefig(tmp, dpi=PNG_DPI if ext == "png" else None, bbox_inches=bbox, format=ext)


def save_figure(fig, path: str | Path, fmts: Sequence[str] | None = None) -> list[Path]:
    """Write ``fig`` as ``path`` with each format's suffix (atomically) and close it.

    On Linux the formats after the first are written by forked copies of this process while it
    writes the first: each format is a full render of its own (text layout, PDF font subsetting),
    and a probe figure's three took 1.5 s one after the other. The copies share the figure's
    memory, write only their own file and report a failure back here, where it is raised.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower().lstrip(".") in ("png", "svg", "pdf") else path
    bbox = tight_bbox(fig)
    exts = list(dict.fromkeys(fmts or formats()))
    targets = [stem.with_suffix(f".{ext}") for ext in exts]
    here, children = list(zip(targets, exts)), []
    try:
        try:
            if len(here) > 1 and _fork_ok():
                rest, here = here[1:], here[:1]
                for t, e in rest:
                    try:
                        children.append(_fork_write(fig, t, e, bbox))
                    except OSError:  # no process to spare: write it here
                        here.append((t, e))
            for t, e in here:
                _write(fig, t, e, bbox)
        finally:
            errors = [err for err in (_reap(c) for c in children) if err]
        if errors:
            raise RuntimeError(f"writing {stem.name}: {errors[0]}")
    finally:
        plt.close(fig)
    return targets


def _fork_write(fig, target: Path, ext: str, bbox) -> tuple[int, int]:
    """Start a forked copy that writes one format; (pid, read end of its error pipe)."""
    _backend(ext)
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:  # the copy: write, report, and leave without running the parent's exit handlers
        os.close(r)
        code = 0
        try:
            _write(fig, target, ext, bbox)
        except BaseException as e:  # noqa: BLE001 - every failure must reach the parent
            os.write(w, f"{type(e).__name__}: {e}".encode()[:4000])
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _backend(ext: str) -> None:
    """Import a format's backend here, once, rather than in every copy that writes it."""
    import importlib

    name = {"svg": "svg", "pdf": "pdf", "ps": "ps", "eps": "ps"}.get(ext)
    if name:
        importlib.import_module(f"matplotlib.backends.backend_{name}")
    if ext == "pdf":
        import fontTools.subset  # noqa: F401 - Type 42 embedding subsets the fonts with it


def _reap(child: tuple[int, int]) -> str:
    """Wait for a copy; its error message, or "" when it wrote its file."""
    pid, r = child
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if not msg and os.waitstatus_to_exitcode(status) != 0:
        msg = f"the process writing it ended with status {os.waitstatus_to_exitcode(status)}"
    return msg
