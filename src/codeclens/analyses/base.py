"""The analysis contract shared by the CLI commands, the study runner and the report.

An analysis reads one or more stores, writes its outputs into its own output
directory, and describes them in ``result.json`` (see :class:`AnalysisResult`)
so that the directory is self-describing and the report can be built from it
alone. ``config.json`` and ``provenance.json`` sit beside it.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..config import to_dict
from ..errors import CodeclensError
from ..util.atomic import naming_failures, write_json
from ..util.provenance import provenance


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A file produced by an analysis (path relative to the analysis directory)."""

    path: str
    """Relative path of the file (csv/parquet table, png/svg figure, wav audio, html page)."""
    caption: str = ""
    """What it shows, for the report."""
    kind: str = "table"
    """table | figure | audio | page"""
    group: str = ""
    """Optional grouping key (e.g. codec or intervention) for the report."""


def _cpu() -> float:
    """CPU seconds so far of this process and of its children that have been waited for."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


@dataclasses.dataclass(frozen=True)
class AnalysisResult:
    """What an analysis produced; saved as ``result.json``."""

    analysis: str
    """Registry name of the analysis."""
    title: str
    """Section title for the report."""
    artifacts: tuple[Artifact, ...] = ()
    """Tables, figures, audio and pages, in display order."""
    summary: str = ""
    """A few sentences of findings (plain text) for the report."""
    published: tuple[Artifact, ...] = ()
    """Published-vs-ours tables (csv with a 'source' column quoting the paper)."""
    seconds: float = 0.0
    """Wall time of the analysis."""
    cpu_seconds: float = 0.0
    """CPU time (user + system) of the analysis: every thread of this process and every child process
    it waited for (the forked copies that write figure formats, worker pools); with ``seconds`` it
    tells a loaded machine's waiting from the work itself."""

    def save(self, out: Path) -> None:
        write_json(Path(out) / "result.json", dataclasses.asdict(self))

    @classmethod
    def load(cls, out: str | Path) -> "AnalysisResult":
        raw = json.loads((Path(out) / "result.json").read_text())
        raw["artifacts"] = tuple(Artifact(**a) for a in raw.get("artifacts", ()))
        raw["published"] = tuple(Artifact(**a) for a in raw.get("published", ()))
        return cls(**raw)


class Analysis(abc.ABC):
    """Subclasses set ``name``, ``title`` and ``Config`` (a frozen dataclass with a
    docstring per field) and implement :meth:`run`."""

    name: ClassVar[str]
    title: ClassVar[str]
    Config: ClassVar[type]
    resumable: ClassVar[bool] = False
    """True when :meth:`run` reuses finished parts of an interrupted run's ``out`` (caches keyed
    by everything they depend on); the study runner then keeps ``out`` when it re-runs the step
    with an unchanged key instead of starting from an empty folder."""

    def validate(self, stores: Sequence[Any], cfg: Any) -> None:
        """Refuse a run that cannot succeed before anything is written (raise CodeclensError).

        The default checks what every analysis shares: a ``repr`` option that names
        representations must fit every store's codec. Analyses add their own checks."""
        text = getattr(cfg, "repr", None)
        if not isinstance(text, str) or not text.strip():
            return
        from ..store.reprs import parse_reprs

        try:
            parse_reprs(text)
        except CodeclensError:
            return  # not a representation list (an analysis' own mode word)
        for s in stores:
            if hasattr(s, "n_layers"):
                try:
                    parse_reprs(text, s.n_layers)
                except CodeclensError as e:
                    raise CodeclensError(f"{getattr(s, 'path', s)}: {e}") from None

    @abc.abstractmethod
    def run(self, stores: Sequence[Any], cfg: Any, out: Path, progress: bool = True) -> AnalysisResult:
        """Compute, write files under ``out`` and return the result (not yet saved)."""

    def __call__(self, stores: Sequence[Any], cfg: Any, out: str | Path, progress: bool = True) -> AnalysisResult:
        """Run and save ``config.json``, ``provenance.json`` and ``result.json`` under ``out``."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise CodeclensError(f"output directory {out} is a file; give another --out")
        self.validate(stores, cfg)
        out.mkdir(parents=True, exist_ok=True)
        # A run refused part-way must leave the folder describing the results it still holds:
        # the old descriptions are set aside by rename (no space needed to put them back).
        kept = _set_aside(out, ("config.json", "provenance.json"))
        try:
            with naming_failures(out):
                write_json(out / "config.json", {"analysis": self.name, "stores": [str(getattr(s, "path", s)) for s in stores], **to_dict(cfg)})
                write_json(out / "provenance.json", provenance())
                t0, c0 = time.perf_counter(), _cpu()
                res = self.run(stores, cfg, out, progress)
        except Exception:
            for name, aside in kept.items():
                if aside is None:
                    (out / name).unlink(missing_ok=True)
                else:
                    os.replace(aside, out / name)
            raise
        for aside in kept.values():
            if aside is not None:
                aside.unlink(missing_ok=True)
        res = dataclasses.replace(res, seconds=time.perf_counter() - t0, cpu_seconds=_cpu() - c0)
        with naming_failures(out):
            res.save(out)
        return res


def _set_aside(out: Path, names: Sequence[str]) -> dict[str, Path | None]:
    kept: dict[str, Path | None] = {}
    for name in names:
        aside = out / f".{name}.kept"
        try:
            os.replace(out / name, aside)
            kept[name] = aside
        except FileNotFoundError:
            kept[name] = None
    return kept
