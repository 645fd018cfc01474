"""One grammar for codec and corpus specs: ``kind[:target][?key=value&...]``.

Examples: ``encodec:24khz@6kbps``, ``melrvq?checkpoint=runs/melrvq``,
``synthetic?n=200&seed=0``, ``python:mypkg.codecs:MyCodec?size=small``.
A bare existing folder path is read as ``folder:PATH``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping
from urllib.parse import unquote

from .errors import SpecError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed spec string."""

    kind: str
    target: str = ""
    options: tuple[tuple[str, str], ...] = ()

    @property
    def opts(self) -> dict[str, str]:
        return dict(self.options)

    def __str__(self) -> str:
        # Escape what the parser splits on, so str() parses back to the same spec
        # (a checkpoint path holding '&' or '?'); ordinary specs print unchanged.
        s = self.kind + (f":{_escape(self.target, '%?')}" if self.target else "")
        if self.options:
            s += "?" + "&".join(f"{k}={_escape(v, '%&')}" for k, v in self.options)
        return s

    def check_keys(self, known: Mapping[str, Any] | set[str] | list[str]) -> None:
        """Fail with the list of known keys when an option is not one of them."""
        known = set(known)
        unknown = sorted(set(self.opts) - known)
        if unknown:
            raise SpecError(
                f"{self.kind}: unknown option(s) {', '.join(unknown)} in '{self}'; "
                f"known: {', '.join(sorted(known)) or '(none)'}"
            )

    def get(self, key: str, default: Any = None, type: Any = str) -> Any:
        """Option ``key`` converted to ``type`` (str, int, float or bool)."""
        raw = self.opts.get(key)
        if raw is None:
            return default
        try:
            if type is bool:
                low = raw.lower()
                if low in _TRUE:
                    return True
                if low in _FALSE:
                    return False
                raise ValueError(raw)
            value = type(raw)
            if value != value:  # nan: passes every range check by comparing false
                raise ValueError(raw)
            return value
        except ValueError:
            raise SpecError(
                f"{self.kind}: option {key}={raw!r} is not a valid {type.__name__}"
            ) from None


def parse_spec(text: str) -> Spec:
    """Parse ``kind[:target][?k=v&k=v]``; a bare existing directory is a folder corpus."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError("empty spec")
    text = text.strip()
    if os.path.isdir(text) and not _looks_like_kind(text):
        return Spec("folder", text)
    head, _, query = text.partition("?")
    kind, sep, target = head.partition(":")
    if not kind or not kind.replace("_", "").replace("-", "").isalnum():
        if os.sep in text or text.startswith("."):
            raise SpecError(f"'{text}' is not an existing folder (nor a spec kind[:target][?key=value&...])")
        raise SpecError(f"bad spec '{text}': expected kind[:target][?key=value&...]")
    options: list[tuple[str, str]] = []
    seen: set[str] = set()
    if query:
        for part in query.split("&"):
            if not part:
                continue
            key, eq, value = part.partition("=")
            key = key.strip()
            if not key:
                raise SpecError(f"bad option '{part}' in spec '{text}'")
            if key in seen:
                raise SpecError(f"option '{key}' given twice in spec '{text}'")
            seen.add(key)
            # A bare flag (``random_init``) means true.
            options.append((key, unquote(value) if eq else "1"))
    return Spec(kind.lower(), unquote(target) if sep else "", tuple(options))


def _escape(text: str, chars: str) -> str:
    for ch in chars:  # '%' first, so the escapes themselves are not escaped again
        text = text.replace(ch, f"%{ord(ch):02X}")
    return text


def _looks_like_kind(text: str) -> bool:
    kind, sep, _ = text.partition(":")
    return bool(sep) and kind.isalpha() and len(kind) > 1
