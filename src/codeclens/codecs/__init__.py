"""Codec adapters, chosen by spec string (see :mod:`codeclens.spec`).

Each adapter lives in its own module and registers itself with
``@CODECS.register("kind")``; ``python:package.module:Class`` loads a plug-in.
"""

from __future__ import annotations

import importlib

import torch

from ..errors import CodeclensError, SpecError
from ..registry import Registry
from ..spec import Spec, parse_spec
from ..util.device import resolve_device
from .base import CodecAdapter, layer_mask

CODECS: Registry[type[CodecAdapter]] = Registry("codec", __name__)


def load_codec(spec: str | Spec, device: str | torch.device | None = None, *,
               extraction_only: bool = False) -> CodecAdapter:
    """Build a codec adapter from a spec string such as ``encodec:24khz@6kbps``.

    ``extraction_only=True`` is for callers that only encode (extraction): adapters that can
    (SpeechTokenizer, EnCodec, DAC, Mimi) load without their decoder, so peak memory holds the
    encoder and quantizer only; the codes are the same. Such an adapter refuses to decode
    (:meth:`CodecAdapter.require_full_model`). Other adapters load in full.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "python":
        cls = load_plugin_class(spec.target)
    else:
        cls = CODECS.get(spec.kind)
    spec.check_keys(set(cls.common_options) | set(cls.options))
    if spec.get("seed", 0, int) < 0:  # numpy and torch seeding reject it with a traceback
        raise SpecError(f"{spec.kind}: seed must be >= 0 (got {spec.get('seed')})")
    dev = resolve_device(spec.get("device", device))
    try:
        build = cls.from_spec_for_extraction if extraction_only else cls.from_spec
        adapter = build(spec, dev)
    except FileNotFoundError as e:
        raise CodeclensError(f"{spec}: checkpoint not found: {e.filename or e}") from None
    except Exception as e:  # noqa: BLE001 - a damaged or malicious weights file (never executed)
        if not _is_weights_error(e):
            raise
        raise CodeclensError(f"{spec}: damaged checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    _check_contract(adapter, spec)
    return adapter


def _is_weights_error(e: Exception) -> bool:
    import pickle

    return isinstance(e, (pickle.UnpicklingError, EOFError)) or type(e).__name__ == "SafetensorError"


def load_plugin_class(target: str) -> type[CodecAdapter]:
    """``package.module:Class`` -> the class, with one-line errors."""
    module_name, sep, cls_name = target.partition(":")
    if not sep or not module_name or not cls_name or module_name.startswith("."):
        raise SpecError(f"plug-in spec needs python:package.module:Class (an absolute module name), got 'python:{target}'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SpecError(f"cannot import plug-in module '{module_name}': {e}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise SpecError(f"plug-in module '{module_name}' has no class '{cls_name}'")
    if not (isinstance(cls, type) and issubclass(cls, CodecAdapter)):
        raise SpecError(f"plug-in '{target}' is not a codeclens.codecs.CodecAdapter subclass")
    return cls


def _check_contract(adapter: CodecAdapter, spec: Spec) -> None:
    for attr in ("sample_rate", "frame_rate", "n_layers", "codebook_sizes"):
        if not hasattr(adapter, attr):
            raise SpecError(f"codec '{spec}' does not set '{attr}'")
    if len(adapter.codebook_sizes) != adapter.n_layers:
        raise SpecError(f"codec '{spec}': codebook_sizes has {len(adapter.codebook_sizes)} entries for {adapter.n_layers} layers")
    adapter.spec = spec


__all__ = ["CODECS", "CodecAdapter", "load_codec", "layer_mask", "load_plugin_class"]
