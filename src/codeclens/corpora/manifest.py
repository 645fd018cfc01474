"""``manifest:FILE``: utterances listed in a CSV/TSV or JSONL file.

Columns (CSV header or JSON keys):

==============  ==========================================================
``path``        audio file, relative to the manifest's folder (or ``root``) or absolute (required)
``speaker``     speaker id (required)
``accent``      accent / variety label
``id``          utterance id (default: the path without extension, plus
                ``@start-end`` for segments)
``start/end``   segment of a long file, in seconds
``textgrid``    Praat TextGrid with the phone alignment (same path rules as ``path``);
                its times are in the audio *file's* time, so a segment takes the
                intervals inside ``[start, end]`` shifted to start at 0
``gender``,     kept as utterance columns, like every other column (numbers
``split``, ...  stay numbers): these become probe targets
==============  ==========================================================

Bad rows never stop the corpus: a missing or unreadable audio file, an empty
required label, a bad segment, a malformed TextGrid (overlapping or
out-of-range intervals, missing tier) or an alignment that does not match the
audio's duration is recorded in ``corpus.problems`` (where ``FILE:row N``, N counting
data rows from 1; message ``FILE, row N (line L): reason``) and the row is skipped.

Options: ``tier`` (TextGrid tier, default ``phones``; else the only tier whose
name contains "phone"), ``tolerance`` (seconds an alignment may differ from the
audio duration, default 0.1), ``require`` (more columns that must be non-empty,
e.g. ``require=accent,gender``), ``root`` (folder for relative paths).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import soundfile as sf

from ..errors import CodeclensError
from . import CORPORA
from .base import Interval, ListedCorpus, Problem, Utterance
from .textgrid import TextGridError, check_intervals, read_textgrid

RESERVED = ("path", "speaker", "accent", "id", "start", "end", "textgrid")
#: Columns the store writes itself; a manifest column of the same name would be overwritten.
STORE_COLUMNS = ("duration", "n_frames", "frame_offset", "split_utt", "split_spk", "utt", "frame", "time")


class RowError(Exception):
    """A bad manifest row (recorded as a problem, the row skipped)."""


def audio_duration(path: Path) -> float:
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises several types for bad files
        raise RowError(f"unreadable audio {path} ({type(e).__name__})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise RowError(f"audio {path} holds no samples")
    return info.frames / info.samplerate


def pick_tier(tiers: dict[str, list[Interval]], tier: str, where: str) -> list[Interval]:
    """The named tier, else the only tier whose name contains 'phone', else the only tier."""
    if tier in tiers:
        return tiers[tier]
    low = {k.lower(): k for k in tiers}
    if tier.lower() in low:
        return tiers[low[tier.lower()]]
    cands = [k for k in tiers if "phone" in k.lower()]
    if len(cands) == 1:
        return tiers[cands[0]]
    if len(tiers) == 1:
        return next(iter(tiers.values()))
    raise TextGridError(f"{where}: no tier '{tier}' (tiers: {', '.join(tiers) or 'none'})")


def cut_segment(intervals: list[Interval], start: float | None, end: float | None) -> list[Interval]:
    """Intervals inside ``[start, end]`` (file time), clipped and shifted to segment time."""
    if start is None and end is None:
        return list(intervals)
    s = start or 0.0
    e = math.inf if end is None else end
    out = []
    for iv in intervals:
        a, b = max(iv.start, s), min(iv.end, e)
        if b > a:
            out.append(Interval(a - s, b - s, iv.label))
    return out


def check_alignment(intervals: list[Interval], duration: float, where: str, tol: float, whole_file: bool) -> None:
    """Ordered, non-overlapping, inside the audio, and (for whole files) reaching its end."""
    check_intervals(intervals, duration, where, tol)
    if not intervals:
        raise TextGridError(f"{where}: the alignment has no intervals")
    if whole_file and intervals[-1].end < duration - tol:
        raise TextGridError(
            f"{where}: alignment ends at {intervals[-1].end:.3f} s but the audio lasts {duration:.3f} s"
        )


def load_textgrid_alignment(
    tg: Path, tier: str, start: float | None, end: float | None, duration: float, tol: float
) -> tuple[Interval, ...]:
    """Phone intervals of a TextGrid for one utterance (segment time), validated."""
    tiers = read_textgrid(tg)
    ivs = pick_tier(tiers, tier, str(tg))
    check_intervals(ivs, None, str(tg), tol)
    seg = cut_segment(ivs, start, end)
    check_alignment(seg, duration, str(tg), tol, whole_file=start is None and end is None)
    return tuple(seg)


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(columns, [(row number, row)]): CSV/TSV by header, JSONL one object a line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise CodeclensError(f"cannot read manifest {path} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise CodeclensError(f"manifest {path} is not UTF-8 text") from None
    suffix = path.suffix.lower()
    is_json = suffix in (".jsonl", ".ndjson", ".json") or (suffix not in (".csv", ".tsv") and text.lstrip().startswith("{"))
    rows: list[tuple[int, dict[str, Any]]] = []
    columns: list[str] = []
    if is_json:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                rows.append((n, {"__error__": f"not valid JSON ({e.msg})"}))
                continue
            if not isinstance(obj, dict):
                rows.append((n, {"__error__": "not a JSON object"}))
                continue
            for k in obj:
                if k not in columns:
                    columns.append(k)
            rows.append((n, obj))
        return columns, rows
    delim = "\t" if suffix == ".tsv" else ","
    if suffix not in (".csv", ".tsv"):
        try:
            delim = csv.Sniffer().sniff(text.splitlines()[0] if text else ",", delimiters=",\t;").delimiter
        except csv.Error:
            delim = ","
    reader = csv.reader(text.splitlines(), delimiter=delim)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CodeclensError(f"manifest {path} is empty") from None
    columns = header
    for n, rec in enumerate(reader, 2):  # n = line number in the file
        if not any(c.strip() for c in rec):
            continue
        if len(rec) != len(header):
            rows.append((n, {"__error__": f"has {len(rec)} fields but the header has {len(header)}"}))
            continue
        rows.append((n, {h: v.strip() for h, v in zip(header, rec)}))
    return columns, rows


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def _typed_columns(columns: list[str], rows: list[tuple[int, dict[str, Any]]]) -> dict[str, str]:
    """'int', 'float' or 'str' per extra column of a CSV (numbers stay numbers for probes)."""
    kinds = {}
    for c in columns:
        vals = [r[c] for _, r in rows if c in r and isinstance(r[c], str) and r[c].strip()]
        kind = "str"
        if vals:
            try:
                nums = [float(v) for v in vals]
                kind = "int" if all(n.is_integer() and "." not in v and "e" not in v.lower() for n, v in zip(nums, vals)) else "float"
            except ValueError:
                kind = "str"
        kinds[c] = kind
    return kinds


def _scalar(v: Any, kind: str = "str") -> Any:
    if _empty(v):
        return None
    if isinstance(v, str):
        if kind == "int":
            return int(v)
        if kind == "float":
            return float(v)
        return v
    if isinstance(v, (bool, int, float)):
        return v
    return json.dumps(v, sort_keys=True)  # lists/objects from JSONL: kept as text


@CORPORA.register("manifest")
class ManifestCorpus(ListedCorpus):
    options = ("tier", "tolerance", "require", "root")

    def __init__(self, spec):
        super().__init__(spec)
        if not spec.target:
            raise CodeclensError("manifest: give a file, e.g. manifest:data/accents.csv")
        self.file = Path(spec.target)
        if not self.file.is_file():
            raise CodeclensError(f"manifest not found: {spec.target}")
        self.root = Path(spec.get("root", str(self.file.parent)))
        self.tier = spec.get("tier", "phones")
        self.tolerance = spec.get("tolerance", 0.1, float)
        if self.tolerance < 0:
            raise CodeclensError("manifest: tolerance must be >= 0")
        self.require = [c.strip() for c in spec.get("require", "").split(",") if c.strip()]

    def _resolve(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.root / q

    def _load(self) -> list[Utterance]:
        columns, rows = _read_rows(self.file)
        for need in ("path", "speaker", *self.require):
            if need not in columns:
                raise CodeclensError(
                    f"{self.file}: manifest has no '{need}' column (columns: {', '.join(columns) or 'none'})"
                )
        clash = [c for c in columns if c in STORE_COLUMNS]
        if clash:
            raise CodeclensError(
                f"{self.file}: column(s) {', '.join(clash)} are written by the store itself; rename them"
            )
        extras = [c for c in columns if c not in RESERVED]
        kinds = _typed_columns(extras, rows)
        utts: list[Utterance] = []
        seen: set[str] = set()
        self.problems = []
        for r, (n, row) in enumerate(rows, 1):
            where = f"{self.file}:row {r}"
            try:
                if "__error__" in row:
                    raise RowError(row["__error__"])
                u = self._row(row, extras, kinds)
                if u.id in seen:
                    raise RowError(f"duplicate utterance id '{u.id}'")
                seen.add(u.id)
                utts.append(u)
            except (RowError, TextGridError) as e:
                self.problems.append(Problem(where, f"{self.file}, row {r} (line {n}): {e}"))
        return utts

    def _row(self, row: dict[str, Any], extras: list[str], kinds: dict[str, str]) -> Utterance:
        for need in ("path", "speaker", *self.require):
            if _empty(row.get(need)):
                raise RowError(f"missing {need}")
        audio = self._resolve(str(row["path"]))
        if not audio.is_file():
            raise RowError(f"audio file not found: {audio}")
        start = self._time(row, "start")
        end = self._time(row, "end")
        file_dur = audio_duration(audio)
        if start is not None and start < 0:
            raise RowError(f"start {start} is negative")
        if start is not None and start >= file_dur:
            raise RowError(f"start {start} s is past the end of {audio} ({file_dur:.3f} s)")
        if end is not None and end <= (start or 0.0):
            raise RowError(f"end {end} is not after start {start or 0.0}")
        if end is not None and end > file_dur + self.tolerance:
            raise RowError(f"end {end} s is past the end of {audio} ({file_dur:.3f} s)")
        seg_dur = min(end if end is not None else file_dur, file_dur) - (start or 0.0)
        phones = None
        if not _empty(row.get("textgrid")):
            tg = self._resolve(str(row["textgrid"]))
            if not tg.is_file():
                raise RowError(f"TextGrid not found: {tg}")
            phones = load_textgrid_alignment(tg, self.tier, start, end, seg_dur, self.tolerance)
        uid = row.get("id")
        if _empty(uid):
            try:
                rel = audio.resolve().relative_to(self.root.resolve())
            except ValueError:
                rel = Path(audio.name)
            uid = rel.with_suffix("").as_posix()
            if start is not None or end is not None:
                uid += f"@{start or 0.0:.3f}-{'' if end is None else f'{end:.3f}'}"
        accent = row.get("accent")
        extra = tuple((c, _scalar(row.get(c), kinds.get(c, "str"))) for c in extras)
        return Utterance(
            id=str(uid), path=str(audio), speaker=str(row["speaker"]).strip(),
            accent=None if _empty(accent) else str(accent).strip(),
            start=start, end=end, phones=phones, extra=extra,
        )

    @staticmethod
    def _time(row: dict[str, Any], key: str) -> float | None:
        v = row.get(key)
        if _empty(v):
            return None
        try:
            t = float(v)
        except (TypeError, ValueError):
            raise RowError(f"{key} '{v}' is not a number of seconds") from None
        if not math.isfinite(t):
            raise RowError(f"{key} '{v}' is not finite")
        return t

    def describe(self) -> dict[str, Any]:
        return {"spec": str(self.spec), "kind": "manifest", "file": str(self.file.resolve())}
