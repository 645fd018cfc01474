"""Corpora, chosen by spec string (``folder:PATH`` or a bare folder, ``synthetic?...``, ...)."""

from __future__ import annotations

from ..registry import Registry
from ..spec import Spec, parse_spec
from .base import Corpus, Interval, Problem, Utterance

CORPORA: Registry[type[Corpus]] = Registry("corpus", __name__)


def load_corpus(spec: str | Spec) -> Corpus:
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    return CORPORA.get(spec.kind).from_spec(spec)


__all__ = ["CORPORA", "Corpus", "Interval", "Problem", "Utterance", "load_corpus"]
