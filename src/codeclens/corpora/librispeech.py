"""``librispeech:PATH?alignments=PATH``: the LibriSpeech layout, with phone alignments.

``PATH`` is a subset folder (``LibriSpeech/test-clean``) or the ``LibriSpeech``
folder holding several subsets; utterances are the ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac``
files below it, in sorted order, with id ``SPEAKER-CHAPTER-NNNN`` and speaker
``SPEAKER``. Utterance columns: ``chapter``, and from ``SPEAKERS.TXT`` (found in
``PATH``, its parent, or given as ``speakers=FILE``) ``gender`` (``female``/``male``, as the synthetic corpus writes it) and
``subset``.

Alignments (``alignments=PATH``, a folder or a single file), in either form:

* Montreal-Forced-Aligner TextGrids ``<id>.TextGrid`` anywhere below the folder
  (usually the same SPEAKER/CHAPTER layout); the ``phones`` tier (option ``tier``);
* the plain-text format commonly published for LibriSpeech: ``*.txt`` files
  (not ``*.trans.txt``) with one line per utterance,
  ``<id> "<comma-separated phones>" "<comma-separated end times>"``, each
  phone starting where the previous one ends (the first at 0); an empty
  label is silence.

With alignments given, an utterance without one, or whose alignment is malformed
or does not match the audio's duration (option ``tolerance``, default 0.1 s), is
skipped and recorded in ``corpus.problems``; so are malformed alignment lines and
files not named like LibriSpeech utterances.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import CodeclensError
from . import CORPORA
from .base import Interval, ListedCorpus, Problem, Utterance
from .manifest import RowError, audio_duration, check_alignment, load_textgrid_alignment
from .textgrid import TextGridError

_UTT = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_LINE = re.compile(r'^(\S+)\s+"([^"]*)"\s+"([^"]*)"\s*$')


def read_speakers(path: Path) -> dict[str, dict[str, str]]:
    """SPEAKERS.TXT: ``ID | SEX | SUBSET | MINUTES | NAME`` lines (``;`` comments)."""
    out: dict[str, dict[str, str]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        sex = parts[1].strip().upper()
        out[parts[0]] = {"gender": {"F": "female", "M": "male"}.get(sex, sex.lower() or None), "subset": parts[2]}
    return out


def read_plain_alignments(path: Path, problems: list[Problem]) -> dict[str, tuple[Interval, ...]]:
    """Parse one plain-text alignment file; bad lines are recorded and skipped."""
    out: dict[str, tuple[Interval, ...]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:line {n}"
        m = _LINE.match(line)
        if not m:
            problems.append(Problem(where, f"{path}, line {n}: not '<id> \"phones\" \"end times\"'"))
            continue
        uid, labs, ends = m.group(1), m.group(2).split(","), m.group(3).split(",")
        try:
            times = [float(t) for t in ends]
        except ValueError:
            problems.append(Problem(where, f"{path}, line {n}: end times are not numbers"))
            continue
        if len(times) != len(labs):
            problems.append(Problem(where, f"{path}, line {n}: {len(labs)} phones but {len(times)} end times"))
            continue
        ivs, prev, bad = [], 0.0, False
        for lab, t in zip(labs, times):
            if t < prev:
                bad = True
                break
            ivs.append(Interval(prev, t, lab.strip()))
            prev = t
        if bad:
            problems.append(Problem(where, f"{path}, line {n}: end times decrease"))
            continue
        out[uid] = tuple(ivs)
    return out


@CORPORA.register("librispeech")
class LibriSpeechCorpus(ListedCorpus):
    options = ("alignments", "speakers", "tier", "tolerance")

    def __init__(self, spec):
        super().__init__(spec)
        self.root = Path(spec.target)
        if not spec.target or not self.root.is_dir():
            raise CodeclensError(f"librispeech: folder not found: {spec.target or '(none given)'}")
        align = spec.get("alignments")
        self.alignments = Path(align) if align else None
        if self.alignments is not None and not self.alignments.exists():
            raise CodeclensError(f"librispeech: alignments not found: {align}")
        spk = spec.get("speakers")
        if spk and not Path(spk).is_file():
            raise CodeclensError(f"librispeech: speakers file not found: {spk}")
        self.speakers_file = Path(spk) if spk else next(
            (p for p in (self.root / "SPEAKERS.TXT", self.root.parent / "SPEAKERS.TXT") if p.is_file()), None
        )
        self.tier = spec.get("tier", "phones")
        self.tolerance = spec.get("tolerance", 0.1, float)
        if self.tolerance < 0:
            raise CodeclensError("librispeech: tolerance must be >= 0")

    def _index_alignments(self) -> tuple[dict[str, Path], dict[str, tuple[Interval, ...]]]:
        grids: dict[str, Path] = {}
        plain: dict[str, tuple[Interval, ...]] = {}
        a = self.alignments
        if a is None:
            return grids, plain
        files = [a] if a.is_file() else sorted(p for p in a.rglob("*") if p.is_file())
        for p in files:
            name = p.name.lower()
            if name.endswith(".textgrid"):
                grids[p.stem] = p
            elif name.endswith(".txt") and not name.endswith(".trans.txt") and name != "speakers.txt":
                plain.update(read_plain_alignments(p, self.problems))
        return grids, plain

    def _load(self) -> list[Utterance]:
        self.problems = []
        speakers = read_speakers(self.speakers_file) if self.speakers_file else {}
        grids, plain = self._index_alignments()
        utts = []
        from .folder import walk_files

        for f in walk_files(self.root, self.problems, (".flac",))[0]:
            m = _UTT.match(f.stem)
            if not m:
                self.problems.append(Problem(str(f), f"{f}: not named SPEAKER-CHAPTER-NNNN.flac"))
                continue
            uid, spk, chapter = f.stem, m.group(1), m.group(2)
            try:
                phones = None
                if self.alignments is not None:
                    dur = audio_duration(f)
                    if uid in grids:
                        phones = load_textgrid_alignment(grids[uid], self.tier, None, None, dur, self.tolerance)
                    elif uid in plain:
                        ivs = list(plain[uid])
                        check_alignment(ivs, dur, f"{self.alignments} ({uid})", self.tolerance, whole_file=True)
                        phones = tuple(ivs)
                    else:
                        raise RowError(f"no alignment for {uid} in {self.alignments}")
            except (RowError, TextGridError) as e:
                self.problems.append(Problem(str(f), f"{f}: {e}"))
                continue
            info = speakers.get(spk, {})
            extra: list[tuple[str, Any]] = [("chapter", chapter)]
            if speakers:
                extra += [("gender", info.get("gender")), ("subset", info.get("subset"))]
            utts.append(Utterance(id=uid, path=str(f), speaker=spk, phones=phones, extra=tuple(extra)))
        return utts

    def describe(self) -> dict[str, Any]:
        return {
            "spec": str(self.spec), "kind": "librispeech", "root": str(self.root.resolve()),
            "alignments": str(self.alignments.resolve()) if self.alignments else None,
        }
