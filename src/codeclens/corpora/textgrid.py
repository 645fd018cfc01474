"""Praat TextGrid reading (long and short text formats) and writing (long format).

Only interval tiers matter here. Malformed files raise :class:`TextGridError`
naming the file, so a corpus can skip that utterance and record why.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CodeclensError
from .base import Interval


class TextGridError(CodeclensError):
    """A TextGrid that cannot be parsed or whose intervals are inconsistent."""


_TOKEN = re.compile(r'"((?:[^"]|"")*)"|([^\s"]+)')


def _tokens(text: str) -> list[str | tuple[str]]:
    """Strings come back as 1-tuples, bare tokens as str (keys like ``xmin =`` are dropped)."""
    out: list[str | tuple[str]] = []
    for m in _TOKEN.finditer(text):
        if m.group(1) is not None:
            out.append((m.group(1).replace('""', '"'),))
        else:
            tok = m.group(2)
            if tok in ("=",) or tok.endswith(":") or tok.startswith("item") or tok.startswith("intervals") or tok.startswith("points"):
                continue
            out.append(tok)
    return out


def read_textgrid(path: str | Path) -> dict[str, list[Interval]]:
    """All interval tiers of a TextGrid: ``{tier name: [Interval, ...]}``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TextGridError(f"{path}: cannot read TextGrid ({e.strerror})") from None
    for enc in ("utf-8-sig", "utf-16"):
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise TextGridError(f"{path}: TextGrid is not UTF-8 or UTF-16 text")
    toks = _tokens(text)
    # Drop "key" words of the long format (xmin, xmax, size, text, class, name, tiers?).
    vals = [t for t in toks if not (isinstance(t, str) and re.fullmatch(r"[A-Za-z_?]+", t) and t not in ("<exists>",))]
    try:
        if len(vals) < 2 or vals[0] != ("ooTextFile",) or vals[1] != ("TextGrid",):
            raise ValueError("missing 'ooTextFile' / 'TextGrid' header")
        i = 2
        float(vals[i]); float(vals[i + 1])  # noqa: E702  (file xmin, xmax)
        i += 2
        if vals[i] == "<exists>":
            i += 1
        n_tiers = int(vals[i])
        i += 1
        tiers: dict[str, list[Interval]] = {}
        for _ in range(n_tiers):
            cls, name = vals[i][0], vals[i + 1][0]  # type: ignore[index]
            i += 2
            i += 2  # tier xmin, xmax
            n = int(vals[i])
            i += 1
            items = []
            if cls == "IntervalTier":
                for _ in range(n):
                    a, b, lab = float(vals[i]), float(vals[i + 1]), vals[i + 2][0]  # type: ignore[index]
                    items.append(Interval(a, b, lab))
                    i += 3
                tiers[name] = items
            else:
                i += 2 * n  # point tier: time, mark
    except IndexError:
        raise TextGridError(f"{path}: truncated TextGrid (it ends before its last interval)") from None
    except (ValueError, TypeError) as e:
        # float()/int() of a label or of text where a time or a count belongs
        why = str(e) if "header" in str(e) else f"non-numeric time or count where a number belongs ({e})"
        raise TextGridError(f"{path}: malformed TextGrid ({why})") from None
    return tiers


def check_intervals(intervals: list[Interval], duration: float | None, where: str, tol: float = 0.05) -> None:
    """Intervals must be ordered, non-overlapping, of non-negative length, and inside the audio."""
    prev_end = 0.0
    for j, iv in enumerate(intervals):
        if iv.end < iv.start:
            raise TextGridError(f"{where}: interval {j + 1} ends before it starts ({iv.start}..{iv.end})")
        if iv.start < prev_end - 1e-6:
            raise TextGridError(f"{where}: interval {j + 1} '{iv.label}' overlaps the previous one")
        if iv.start < -1e-6:
            raise TextGridError(f"{where}: interval {j + 1} starts before 0")
        prev_end = iv.end
    if duration is not None and intervals and intervals[-1].end > duration + tol:
        raise TextGridError(
            f"{where}: alignment ends at {intervals[-1].end:.3f} s but the audio lasts {duration:.3f} s"
        )


def write_textgrid(path: str | Path, tiers: dict[str, list[Interval]], xmax: float) -> None:
    """Write interval tiers in the long text format (gaps are filled with empty intervals)."""
    def esc(s: str) -> str:
        return s.replace('"', '""')

    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {xmax:.6f}",
             "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for ti, (name, ivs) in enumerate(tiers.items(), 1):
        filled: list[Interval] = []
        t = 0.0
        for iv in ivs:
            if iv.start > t + 1e-9:
                filled.append(Interval(t, iv.start, ""))
            filled.append(iv)
            t = iv.end
        if t < xmax - 1e-9:
            filled.append(Interval(t, xmax, ""))
        lines += [f"    item [{ti}]:", '        class = "IntervalTier"', f'        name = "{esc(name)}"',
                  "        xmin = 0", f"        xmax = {xmax:.6f}", f"        intervals: size = {len(filled)}"]
        for j, iv in enumerate(filled, 1):
            lines += [f"        intervals [{j}]:", f"            xmin = {iv.start:.6f}",
                      f"            xmax = {iv.end:.6f}", f'            text = "{esc(iv.label)}"']
    from ..util.atomic import write_text

    write_text(path, "\n".join(lines) + "\n")
