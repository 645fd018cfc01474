"""Labellers, chosen by spec string; each adds columns to the frames/utterances tables."""

from __future__ import annotations

from ..registry import Registry
from ..spec import Spec, parse_spec
from .base import Labeller, frame_times

LABELLERS: Registry[type[Labeller]] = Registry("labeller", __name__)


def load_labeller(spec: str | Spec) -> Labeller:
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    return LABELLERS.get(spec.kind).from_spec(spec)


def parse_label_list(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"phone,f0?method=crepe,loudness"`` -> individual specs (commas inside ``?...`` options are not used)."""
    if isinstance(text, (list, tuple)):
        return [t for t in text if t]
    return [t.strip() for t in text.split(",") if t.strip()]


__all__ = ["LABELLERS", "Labeller", "frame_times", "load_labeller", "parse_label_list"]
