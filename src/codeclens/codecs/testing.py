"""Small random-weight checkpoints for tests, demos and probing controls.

``save_random_checkpoint("encodec:24khz@6kbps?size=tiny", DIR)`` builds the codec with
``random_init`` (random weights, codebooks initialised from the calibration signal),
saves it the way real checkpoints are stored (a transformers ``save_pretrained``
directory, or the adapter's own format), and returns the spec that reloads it through
the ordinary loader, e.g. ``encodec:24khz@6kbps?checkpoint=DIR``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CodeclensError
from ..spec import Spec, parse_spec
from . import load_codec

#: Options that only shape how a random model is built; the saved checkpoint holds them.
BUILD_OPTIONS = ("random_init", "size", "seed", "checkpoint", "device", "calibration")


def random_spec(spec: str | Spec, seed: int | None = None) -> Spec:
    """``spec`` with ``random_init=1`` (and ``seed`` when given) added."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    opts = dict(spec.options)
    opts["random_init"] = "1"
    if seed is not None:
        opts["seed"] = str(seed)
    return Spec(spec.kind, spec.target, tuple(opts.items()))


def reload_spec(spec: str | Spec, checkpoint: str | Path) -> str:
    """The spec that loads a saved checkpoint: same kind, target and run-time options
    (e.g. ``layers`` of mimi), with ``checkpoint=`` instead of the build options."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    opts = [(k, v) for k, v in spec.options if k not in BUILD_OPTIONS]
    opts.append(("checkpoint", str(checkpoint)))
    return str(Spec(spec.kind, spec.target, tuple(opts)))


def save_random_checkpoint(spec: str | Spec, out: str | Path, seed: int | None = None,
                           device: str | torch.device | None = "cpu") -> str:
    """Build ``spec`` with random weights, save it to ``out``; returns the spec that reloads it."""
    codec = load_codec(random_spec(spec, seed), device)
    save = getattr(codec, "save", None)
    if save is None:
        raise CodeclensError(f"codec '{parse_spec(str(spec)).kind}' cannot save checkpoints (no save method)")
    save(Path(out))
    return reload_spec(spec, Path(out))
