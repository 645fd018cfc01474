"""The study file: corpora x codecs x analyses, as TOML, validated on load.

A study file has these tables (see docs/study.md for a full example)::

    [study]                 name, title, description, device, seed
    [extract]               defaults for every extraction (ExtractConfig options)
    [corpora.NAME]          spec, limit, extract = {...}
    [codecs.NAME]           spec, label, control, fit = {...}, save_random, extract = {...}
    [analyses.NAME]         kind, corpora, codecs, per, + the analysis' own options
    [[published]]           path, source, caption   (published numbers quoted in the report)

Everything is checked before any work starts: unknown tables or keys, unknown
corpus/codec kinds and spec options, unknown analyses and analysis options, and
references to undeclared corpora or codecs are one-line errors that name the
key and list the known ones.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

from ..config import build, to_dict
from ..errors import CodeclensError, SpecError
from ..spec import Spec, parse_spec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: Keys of an ``[analyses.NAME]`` table that belong to the runner, not to the analysis.
ANALYSIS_KEYS = ("kind", "corpora", "codecs", "per")


class StudyError(CodeclensError):
    """A study file that cannot be used (printed as one line by the CLI)."""


@dataclasses.dataclass(frozen=True)
class StudyMeta:
    name: str = "study"
    """Short name of the study (used in titles and file names)."""
    title: str = ""
    """Report title (default: the name)."""
    description: str = ""
    """A paragraph shown at the top of the report."""
    device: str = "auto"
    """Torch device for every step (auto: CUDA when present)."""
    seed: int = 0
    """Seed given to every step that takes one and was not given its own."""
    threads: int = 0
    """Torch CPU threads during the run (0: torch's default). 1 is much faster on a busy machine."""
    isolate: bool = True
    """Run each fit, random-weight, extraction and analysis step in a fresh process: its memory goes back to
    the OS when it ends, so no step starts from another's models and caches (false: all in the runner's
    process, ~2-5 s less per step)."""

    def __post_init__(self):
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        # The name becomes runs/<name>: a '/' or '..' would write outside runs/.
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, '_', '-', '.' (it names the run folder)")


@dataclasses.dataclass(frozen=True)
class CorpusEntry:
    name: str
    """Key of the corpus in the study."""
    spec: str
    """Corpus spec (synthetic?n=..., librispeech:PATH?alignments=..., manifest:FILE, a folder)."""
    limit: int | None = None
    """Only the first N utterances."""
    extract: tuple[tuple[str, Any], ...] = ()
    """Extraction options for this corpus (override [extract])."""


@dataclasses.dataclass(frozen=True)
class FitConfig:
    corpus: str
    """Study corpus the melrvq codebooks are fitted on."""
    layers: int = 8
    """Residual layers."""
    codebook_size: int = 256
    """Codes per layer."""
    iters: int = 25
    """k-means iterations per layer."""
    max_frames: int = 200_000
    """At most this many log-mel frames are used."""
    seed: int = 0
    """k-means seed."""

    def __post_init__(self):
        if self.layers < 1 or self.codebook_size < 2 or self.iters < 1 or self.max_frames < 1:
            raise ValueError("need layers >= 1, codebook_size >= 2, iters >= 1, max_frames >= 1")


@dataclasses.dataclass(frozen=True)
class CodecEntry:
    name: str
    """Key of the codec in the study."""
    spec: str
    """Codec spec (encodec:24khz@6kbps, dac:16khz?random_init=1, melrvq, python:pkg.mod:Class)."""
    label: str = ""
    """Display name in figures and the report (default: the key)."""
    control: bool = False
    """A control (random weights); marked as such in the report."""
    fit: FitConfig | None = None
    """For melrvq: fit codebooks on a study corpus first (a step of the run)."""
    save_random: bool = False
    """For random_init specs: save the random weights once as a checkpoint and load that everywhere."""
    extract: tuple[tuple[str, Any], ...] = ()
    """Extraction options for this codec (override [extract] and the corpus' own)."""

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclasses.dataclass(frozen=True)
class AnalysisEntry:
    name: str
    """Key of the analysis in the study (several entries may share a kind)."""
    kind: str
    """Registered analysis name (probes, tokens, tsne, mi, sae, ablate, ...)."""
    corpora: tuple[str, ...]
    """Study corpora it runs on."""
    codecs: tuple[str, ...]
    """Study codecs whose stores it reads."""
    per: str
    """corpus: one run per corpus reading all its codecs' stores; store: one run per store."""
    config: Any
    """The analysis' own Config, validated."""
    options: tuple[tuple[str, Any], ...] = ()
    """The options as written in the study (for display)."""


@dataclasses.dataclass(frozen=True)
class PublishedEntry:
    path: str
    """CSV of published numbers (relative to the study file)."""
    source: str
    """Citation quoted beside the numbers."""
    caption: str = ""
    """What the table shows."""


@dataclasses.dataclass(frozen=True)
class Study:
    path: str
    """The study file."""
    text: str
    """Its text, kept for provenance."""
    meta: StudyMeta
    corpora: tuple[CorpusEntry, ...]
    codecs: tuple[CodecEntry, ...]
    analyses: tuple[AnalysisEntry, ...]
    extract: tuple[tuple[str, Any], ...] = ()
    published: tuple[PublishedEntry, ...] = ()

    @property
    def title(self) -> str:
        return self.meta.title or self.meta.name

    def corpus(self, name: str) -> CorpusEntry:
        return next(c for c in self.corpora if c.name == name)

    def codec(self, name: str) -> CodecEntry:
        return next(c for c in self.codecs if c.name == name)

    def extract_options(self, corpus: str, codec: str) -> dict[str, Any]:
        """[extract] < corpus extract < codec extract."""
        return {**dict(self.extract), **dict(self.corpus(corpus).extract), **dict(self.codec(codec).extract)}


# -- loading ------------------------------------------------------------------


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; every problem is a one-line :class:`StudyError`."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file not found: {path}")
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{path}: not valid TOML: {e}") from None
    return parse_study(raw, str(path), text)


def parse_study(raw: Mapping[str, Any], path: str = "<study>", text: str = "") -> Study:
    where = Path(path).name
    _check_keys(raw, ("study", "extract", "corpora", "codecs", "analyses", "published"), where, "top-level table")
    meta = _build(StudyMeta, _table(raw, "study", where), f"{where}: [study]")
    extract = _extract_options(_table(raw, "extract", where), f"{where}: [extract]")

    corpora = tuple(_corpus(name, t, where) for name, t in _named_tables(raw, "corpora", where))
    if not corpora:
        raise StudyError(f"{where}: no corpora; add a [corpora.NAME] table with a spec")
    corpus_names = [c.name for c in corpora]
    codecs = tuple(_codec(name, t, where, corpus_names) for name, t in _named_tables(raw, "codecs", where))
    if not codecs:
        raise StudyError(f"{where}: no codecs; add a [codecs.NAME] table with a spec")
    codec_names = [c.name for c in codecs]
    analyses = tuple(
        _analysis(name, t, where, corpus_names, codec_names, meta) for name, t in _named_tables(raw, "analyses", where)
    )
    published = tuple(_published(i, t, where, Path(path).parent) for i, t in enumerate(_list(raw, "published", where)))
    for c in corpora:  # the merged extraction options must make a valid ExtractConfig
        for k in codecs:
            _extract_options({**dict(extract), **dict(c.extract), **dict(k.extract)}, f"{where}: extraction of {c.name} x {k.name}")
    return Study(str(path), text, meta, corpora, codecs, analyses, extract, published)


def _corpus(name: str, t: Mapping[str, Any], where: str) -> CorpusEntry:
    at = f"{where}: [corpora.{name}]"
    _check_keys(t, ("spec", "limit", "extract"), at, "key")
    spec = _require_str(t, "spec", at)
    _check_corpus_spec(spec, at)
    limit = t.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise StudyError(f"{at}: limit must be an integer >= 1, got {limit!r}")
    ex = _extract_options(_sub(t, "extract", at), f"{at}.extract")
    return CorpusEntry(name, spec, limit, ex)


def _codec(name: str, t: Mapping[str, Any], where: str, corpora: list[str]) -> CodecEntry:
    at = f"{where}: [codecs.{name}]"
    _check_keys(t, ("spec", "label", "control", "fit", "save_random", "extract"), at, "key")
    spec_text = _require_str(t, "spec", at)
    spec = _check_codec_spec(spec_text, at)
    label = t.get("label", "")
    if not isinstance(label, str):
        raise StudyError(f"{at}: label must be a string")
    for flag in ("control", "save_random"):
        if not isinstance(t.get(flag, False), bool):
            raise StudyError(f"{at}: {flag} must be true or false, got {t[flag]!r}")
    fit = None
    if "fit" in t:
        if spec.kind != "melrvq":
            raise StudyError(f"{at}: fit = {{...}} is only for melrvq codecs, not '{spec.kind}'")
        if spec.get("checkpoint"):
            raise StudyError(f"{at}: give either fit = {{...}} or checkpoint=, not both")
        fit = _build(FitConfig, _sub(t, "fit", at), f"{at}.fit")
        if fit.corpus not in corpora:
            raise StudyError(f"{at}.fit: corpus '{fit.corpus}' is not a study corpus; known: {', '.join(corpora)}")
    elif spec.kind == "melrvq" and not spec.get("checkpoint") and not spec.get("random_init", False, bool):
        raise StudyError(f"{at}: melrvq needs fit = {{corpus = ...}}, checkpoint= or random_init=1")
    save_random = bool(t.get("save_random", False))
    if save_random and not spec.get("random_init", False, bool):
        raise StudyError(f"{at}: save_random = true needs a random_init spec")
    control = bool(t.get("control", spec.get("random_init", False, bool)))
    ex = _extract_options(_sub(t, "extract", at), f"{at}.extract")
    return CodecEntry(name, spec_text, label, control, fit, save_random, ex)


def _analysis(name, t, where, corpora, codecs, meta: StudyMeta) -> AnalysisEntry:
    from ..analyses import ANALYSES

    at = f"{where}: [analyses.{name}]"
    kind = t.get("kind", name)
    if not isinstance(kind, str) or kind not in ANALYSES:
        raise StudyError(f"{at}: unknown analysis '{kind}'; known: {', '.join(ANALYSES.names()) or '(none)'}")
    cls = ANALYSES.get(kind)
    sel_corpora = _selection(t.get("corpora"), corpora, "corpora", at)
    sel_codecs = _selection(t.get("codecs"), codecs, "codecs", at)
    per = t.get("per", getattr(cls, "per", "corpus"))
    if per not in ("corpus", "store"):
        raise StudyError(f"{at}: per must be 'corpus' or 'store', got {per!r}")
    opts = {k: v for k, v in t.items() if k not in ANALYSIS_KEYS}
    fields = {f.name for f in dataclasses.fields(cls.Config) if f.init}
    unknown = sorted(set(opts) - fields)
    if unknown:
        known = sorted(fields | set(ANALYSIS_KEYS))
        raise StudyError(f"{at}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    # Study-wide defaults for options every analysis tends to have.
    full = dict(opts)
    for key in ("device", "seed"):
        if key in fields and key not in full:
            full[key] = getattr(meta, key)
    cfg = _build(cls.Config, full, at)
    return AnalysisEntry(name, kind, sel_corpora, sel_codecs, per, cfg, tuple(sorted(opts.items())))


def _published(i: int, t: Any, where: str, base: Path) -> PublishedEntry:
    at = f"{where}: [[published]] #{i + 1}"
    if not isinstance(t, dict):
        raise StudyError(f"{at}: expected a table")
    _check_keys(t, ("path", "source", "caption"), at, "key")
    p = _require_str(t, "path", at)
    src = _require_str(t, "source", at)
    full = base / p
    # The table is quoted into a shared report: only files of the study's own folder.
    if not full.resolve().is_relative_to(base.resolve()):
        raise StudyError(f"{at}: published table {p} is outside the study's folder {base}; copy it there")
    if not full.is_file():
        raise StudyError(f"{at}: published table not found: {full}")
    cap = t.get("caption", "")
    if not isinstance(cap, str):
        raise StudyError(f"{at}: caption must be a string")
    return PublishedEntry(str(full), src, cap)


# -- checks -------------------------------------------------------------------


def _check_corpus_spec(text: str, at: str) -> Spec:
    from ..corpora import CORPORA

    try:
        spec = parse_spec(text)
        if spec.kind == "folder" and not Path(spec.target).is_dir():
            raise SpecError(f"corpus folder not found: {spec.target}")
        cls = CORPORA.get(spec.kind)
        spec.check_keys(cls.options)
        _check_paths(spec, _CORPUS_PATHS)
    except SpecError as e:
        raise StudyError(f"{at}: spec: {e}") from None
    return spec


def _check_codec_spec(text: str, at: str) -> Spec:
    from ..codecs import CODECS, load_plugin_class

    try:
        spec = parse_spec(text)
        cls = load_plugin_class(spec.target) if spec.kind == "python" else CODECS.get(spec.kind)
        spec.check_keys(set(cls.common_options) | set(cls.options))
        for flag in ("random_init",):
            spec.get(flag, False, bool)
        _check_paths(spec, {})
    except SpecError as e:
        raise StudyError(f"{at}: spec: {e}") from None
    return spec


# What each corpus kind reads from disk: its target and these options (a synthetic corpus's
# target is written, not read).
_CORPUS_PATHS = {"librispeech": ("", "alignments", "speakers"), "manifest": ("", "root")}
# Codec options naming files; a hub id (org/name) is not a path, so only explicit paths are checked.
_CODEC_PATH_KEYS = ("checkpoint", "config")


def _check_paths(spec: Spec, corpus_paths: Mapping[str, tuple[str, ...]]) -> None:
    """Every file a spec names must exist now, not only when the run reaches it."""
    if corpus_paths:
        keys = corpus_paths.get(spec.kind, ())
        values = [(k or "target", spec.target if not k else spec.opts.get(k)) for k in keys]
    else:
        values = [(k, v) for k, v in spec.opts.items() if k in _CODEC_PATH_KEYS and _explicit_path(v)]
    for key, v in values:
        if v and not Path(v).expanduser().exists():
            raise SpecError(f"{spec.kind}: {key} not found: {v}")


def _explicit_path(v: str) -> bool:
    return Path(v).is_absolute() or v.startswith(("./", "../", "~", ".\\"))


def _extract_options(t: Mapping[str, Any], at: str) -> tuple[tuple[str, Any], ...]:
    from ..store.writer import ExtractConfig

    reserved = {"corpus", "codec", "out", "overwrite", "name", "device", "inputs"}
    bad = sorted(set(t) & reserved)
    if bad:
        raise StudyError(f"{at}: {', '.join(bad)} cannot be set here (the runner sets them)")
    _build(ExtractConfig, {"corpus": "x", "codec": "x", "out": "x", **t}, at)
    return tuple(sorted(t.items(), key=lambda kv: kv[0]))


def _selection(value: Any, known: list[str], what: str, at: str) -> tuple[str, ...]:
    if value is None:
        return tuple(known)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise StudyError(f"{at}: {what} must be a non-empty list of names")
    for v in value:
        if v not in known:
            raise StudyError(f"{at}: {what}: '{v}' is not in the study; known: {', '.join(known)}")
    return tuple(value)


def _build(cls, values: Mapping[str, Any], at: str):
    try:
        return build(cls, dict(values), where=at)
    except CodeclensError as e:
        raise StudyError(str(e)) from None


def _check_keys(t: Mapping[str, Any], known: tuple[str, ...], at: str, what: str) -> None:
    unknown = sorted(set(t) - set(known))
    if unknown:
        raise StudyError(f"{at}: unknown {what}(s) {', '.join(unknown)}; known: {', '.join(known)}")


def _table(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    t = raw.get(key, {})
    if not isinstance(t, dict):
        raise StudyError(f"{where}: [{key}] must be a table")
    return t


def _sub(t: Mapping[str, Any], key: str, at: str) -> dict[str, Any]:
    v = t.get(key, {})
    if not isinstance(v, dict):
        raise StudyError(f"{at}: {key} must be a table ({key} = {{...}})")
    return v


def _list(raw: Mapping[str, Any], key: str, where: str) -> list[Any]:
    v = raw.get(key, [])
    if not isinstance(v, list):
        raise StudyError(f"{where}: published must be an array of tables ([[{key}]])")
    return v


def _named_tables(raw: Mapping[str, Any], key: str, where: str):
    t = _table(raw, key, where)
    for name, sub in t.items():
        if not _NAME.match(name):
            raise StudyError(f"{where}: [{key}.{name}]: names use letters, digits, '_', '-', '.'")
        if not isinstance(sub, dict):
            raise StudyError(f"{where}: {key}.{name} must be a table ([{key}.{name}])")
        yield name, sub


def _require_str(t: Mapping[str, Any], key: str, at: str) -> str:
    v = t.get(key)
    if not isinstance(v, str) or not v.strip():
        raise StudyError(f"{at}: missing '{key}' (a string)")
    return v.strip()


def describe(study: Study) -> dict[str, Any]:
    """JSON-able summary of a study (for run.json and the report)."""
    return {
        "path": study.path,
        "meta": dataclasses.asdict(study.meta),
        "corpora": [dataclasses.asdict(c) for c in study.corpora],
        "codecs": [
            {**dataclasses.asdict(c), "fit": dataclasses.asdict(c.fit) if c.fit else None} for c in study.codecs
        ],
        "analyses": [
            {"name": a.name, "kind": a.kind, "corpora": list(a.corpora), "codecs": list(a.codecs), "per": a.per,
             "config": to_dict(a.config)}
            for a in study.analyses
        ],
    }
