"""Named representations: ``layer:k``, ``cumulative:k``, ``latent``, ``codes:k`` and ``mean(...)``.

Layers are 1-based in names. Ranges expand: ``layer:1-8`` is eight
representations; a comma list mixes kinds: ``layer:1-8,cumulative:8,latent``.
"""

from __future__ import annotations

import dataclasses
import re

from ..errors import CodeclensError

KINDS = ("layer", "cumulative", "latent", "codes")


@dataclasses.dataclass(frozen=True)
class Repr:
    kind: str
    """layer | cumulative | latent | codes"""
    layer: int | None = None
    """1-based layer (None for latent)."""
    pooled: bool = False
    """Utterance-level mean over time."""

    @property
    def name(self) -> str:
        base = self.kind if self.layer is None else f"{self.kind}:{self.layer}"
        return f"mean({base})" if self.pooled else base

    def __str__(self) -> str:
        return self.name

    @property
    def is_lookup(self) -> bool:
        """A single layer's vector: at most K distinct values, one per code."""
        return self.kind in ("layer", "codes") and not self.pooled


_ONE = re.compile(r"^(?P<kind>[a-z]+)(?::(?P<a>\d+)(?:-(?P<b>\d+))?)?$")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_reprs(text: str, n_layers: int | None = None, pooled: bool = False) -> list[Repr]:
    """Parse a representation list; ``n_layers`` checks ranges (``layer:*`` = all layers)."""
    out: list[Repr] = []
    for part in _split_top(text.replace(" ", "")):
        m_pool = re.match(r"^mean\((.*)\)$", part)
        if m_pool:
            out.extend(parse_reprs(m_pool.group(1), n_layers, pooled=True))
            continue
        if n_layers is not None:
            part = part.replace(":*", f":1-{n_layers}")
        m = _ONE.match(part)
        if not m or m.group("kind") not in KINDS:
            raise CodeclensError(
                f"bad representation '{part}': expected layer:K, cumulative:K, codes:K, latent, "
                f"a range like layer:1-8, or mean(...)"
            )
        kind = m.group("kind")
        if kind == "latent":
            if m.group("a"):
                raise CodeclensError(f"bad representation '{part}': latent takes no layer")
            out.append(Repr("latent", None, pooled))
            continue
        if not m.group("a"):
            raise CodeclensError(f"bad representation '{part}': {kind} needs a layer, e.g. {kind}:1")
        a = int(m.group("a"))
        b = int(m.group("b") or a)
        if a < 1 or b < a:
            raise CodeclensError(f"bad layer range in '{part}' (layers are 1-based)")
        if n_layers is not None and b > n_layers:
            raise CodeclensError(f"representation '{part}' asks for layer {b} but the codec has {n_layers}")
        out.extend(Repr(kind, k, pooled) for k in range(a, b + 1))
    if not out:
        raise CodeclensError("no representation given")
    return list(dict.fromkeys(out))
