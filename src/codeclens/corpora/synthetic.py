"""``synthetic[:DIR]?n=200&seed=0&accents=en-us,en-gb&speakers_per_accent=3``: English speech from eSpeak NG.

The corpus is written once to disk as a real corpus (wav files, one TextGrid per
utterance with ``phones`` and ``words`` tiers, and a ``manifest.csv``) and always
read back from disk, so it goes through the same reading code as a recorded
corpus. See ``docs/corpora-synthetic.md`` for the options and the format.

Design (why it looks like this):
- Speakers are fixed (accent, voice variant, pitch, rate) tuples drawn from the
  seed; a speaker's draw depends only on (seed, accent, its index), so adding an
  accent or a speaker does not change the others.
- Utterances go in rounds: in round r every accent speaks the same sentence (its
  speaker r mod speakers_per_accent), so accents are compared on the same words.
- Each utterance is synthesized in a fresh fork of an untouched eSpeak process
  (:class:`~codeclens.corpora.espeak.IsolatedSynthesizer`): its bytes depend on
  the options only, which makes re-runs and resumed runs identical.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import wave
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..config import build
from ..errors import CodeclensError
from ..spec import Spec
from ..util.atomic import atomic_path, write_json, write_text
from ..util.cache import cache_root
from ..util.process import pid_alive
from . import CORPORA
from .base import Corpus, Interval, Problem, Utterance
from .espeak import (PITCH_RANGE, RATE_RANGE, IsolatedSynthesizer, Job, Synthesis, add_padding, assign_closures,
                     engine, load_raw)

FORMAT_VERSION = 1
"""Bumped when the on-disk layout or the speaker/utterance plan changes (it is part of the cache key)."""

PREFERRED_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029")
"""Listed first among the default accents; every other English variety eSpeak NG has follows."""
NOT_ACCENTS = ("en-shaw",)
"""English "voices" that are not accents (Shavian is a spelling system)."""
DEFAULT_VARIANTS = ("m1", "m3", "m4", "m5", "m6", "m7", "m8",
                    "f1", "Annie", "aunty", "belinda", "linda", "steph", "steph3")
"""Variants that state their gender and add no echo (echo fills pauses and stop closures, which
hides closures from :func:`~codeclens.corpora.espeak.assign_closures`); speakers alternate gender."""
MANIFEST_COLUMNS = ("id", "path", "speaker", "accent", "gender", "textgrid", "text", "sentence",
                    "voice", "variant", "pitch", "rate")
COMPLETE = "COMPLETE"
SETTINGS = "synthetic.json"


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What to synthesize. Every field except the output folder is part of the corpus' identity."""

    n: int = 200
    """Number of utterances."""
    seed: int = 0
    """Chooses speakers (variant, pitch, rate) and the sentence order."""
    accents: tuple[str, ...] = ()
    """eSpeak NG language codes (en-us, en-gb, en-gb-scotland, ...); empty: every English accent eSpeak NG has."""
    speakers_per_accent: int = 3
    """Speakers per accent; each is a fixed (variant, pitch, rate)."""
    variants: tuple[str, ...] = ()
    """Voice variants to draw speakers from (names in espeak-ng-data/voices/!v); empty: :data:`DEFAULT_VARIANTS`."""
    pitch: tuple[int, int] = (35, 65)
    """Range of eSpeak's base-pitch parameter (0-100, 50 = the variant's own pitch), drawn per speaker."""
    rate: tuple[int, int] = (150, 195)
    """Range of speaking rates in words per minute (80-450), drawn per speaker."""
    pad: float = 0.1
    """Seconds of silence added before and after each utterance."""
    sentences: str = ""
    """Text file, one sentence per line ('#' comments); empty: the bundled list."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.speakers_per_accent < 1:
            raise ValueError(f"speakers_per_accent must be at least 1, got {self.speakers_per_accent}")
        for name, (lo, hi), (amin, amax) in (("pitch", self.pitch, PITCH_RANGE), ("rate", self.rate, RATE_RANGE)):
            if not amin <= lo <= hi <= amax:
                raise ValueError(f"{name} range {lo}-{hi} must be ordered and inside {amin}-{amax}")
        if not 0 <= self.pad <= 5:
            raise ValueError(f"pad must be between 0 and 5 seconds, got {self.pad}")
        if len(set(self.accents)) != len(self.accents):
            raise ValueError(f"accents are repeated: {','.join(self.accents)}")


@dataclasses.dataclass(frozen=True)
class Speaker:
    id: str
    accent: str
    voice: str
    """Voice name given to eSpeak: language voice file + variant, e.g. ``gmw/en-US+f2``."""
    variant: str
    gender: str
    pitch: int
    rate: int


@dataclasses.dataclass(frozen=True)
class PlannedUtterance:
    id: str
    speaker: Speaker
    sentence: int
    text: str
    noise_seed: int
    """Seed of eSpeak's noise generator (breath noise) for this utterance."""

    @property
    def wav(self) -> str:
        return f"audio/{self.speaker.id}/{self.id}.wav"

    @property
    def textgrid(self) -> str:
        return f"textgrid/{self.speaker.id}/{self.id}.TextGrid"


# ----------------------------------------------------------------------------------------------
# Options


def _range(spec: Spec, key: str, default: tuple[int, int]) -> tuple[int, int]:
    raw = spec.opts.get(key)
    if raw is None:
        return default
    parts = raw.split("-")
    try:
        if len(parts) == 1:
            v = int(parts[0])
            return (v, v)
        if len(parts) == 2:
            return (int(parts[0]), int(parts[1]))
    except ValueError:
        pass
    raise CodeclensError(f"synthetic: option {key}={raw!r} must be a number or a range like 40-60")


def config_from_spec(spec: Spec) -> SyntheticConfig:
    values: dict[str, Any] = {}
    for key, tp in (("n", int), ("seed", int), ("speakers_per_accent", int), ("pad", float), ("sentences", str)):
        if key in spec.opts:
            values[key] = spec.get(key, None, tp)
    for key in ("accents", "variants"):
        if key in spec.opts:
            values[key] = tuple(t.strip().lower() if key == "accents" else t.strip()
                                for t in spec.opts[key].split(",") if t.strip())
    for key, default in (("pitch", SyntheticConfig.pitch), ("rate", SyntheticConfig.rate)):
        if key in spec.opts:
            values[key] = _range(spec, key, default)
    return resolve(build(SyntheticConfig, values, where="synthetic"))


def accent_voices() -> dict[str, str]:
    """Language code -> eSpeak voice identifier, for every voice eSpeak NG lists."""
    out: dict[str, str] = {}
    for primary_only in (True, False):  # a code's own voice wins over voices that also serve it
        for v in engine().voices:
            for lang in v.languages[:1] if primary_only else v.languages:
                out.setdefault(lang.lower(), v.identifier)
    return out


def default_accents() -> tuple[str, ...]:
    english = sorted(a for a in accent_voices() if a.startswith("en-") and a not in NOT_ACCENTS)
    return tuple([a for a in PREFERRED_ACCENTS if a in english] + [a for a in english if a not in PREFERRED_ACCENTS])


def resolve(cfg: SyntheticConfig) -> SyntheticConfig:
    """Fill the defaults that depend on the installed eSpeak NG, and check names against it."""
    voices = accent_voices()
    accents = cfg.accents or default_accents()
    bad = [a for a in accents if a not in voices]
    if bad:
        raise CodeclensError(
            f"synthetic: unknown accent(s) {', '.join(bad)}; English accents: {', '.join(default_accents())} "
            "(any eSpeak NG language code also works)"
        )
    known_variants = {v.name for v in engine().variants}
    bad = [v for v in cfg.variants if v not in known_variants]
    if bad:
        raise CodeclensError(
            f"synthetic: unknown voice variant(s) {', '.join(bad)}; e.g. {', '.join(DEFAULT_VARIANTS)} "
            f"({len(known_variants)} in espeak-ng-data/voices/!v)"
        )
    if cfg.sentences and not Path(cfg.sentences).is_file():
        raise CodeclensError(f"synthetic: sentences file not found: {cfg.sentences}")
    return dataclasses.replace(cfg, accents=tuple(accents))


def bundled_sentences() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "sentences.txt"


def read_sentences(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CodeclensError(f"synthetic: cannot read sentences file {path} ({e})") from None
    out = []
    for no, line in enumerate(lines, 1):
        line = " ".join(line.split())
        if not line or line.startswith("#"):
            continue
        if not any(c.isalpha() for c in line):
            raise CodeclensError(f"synthetic: {path} line {no} has no words: {line!r}")
        out.append(line)
    if not out:
        raise CodeclensError(f"synthetic: {path} holds no sentences")
    return out


# ----------------------------------------------------------------------------------------------
# The plan: speakers and utterances, a pure function of the config


def _accent_key(accent: str) -> int:
    return zlib.crc32(accent.encode())


def plan_speakers(cfg: SyntheticConfig) -> dict[str, list[Speaker]]:
    voices = accent_voices()
    genders = {v.name: v.gender for v in engine().variants}
    out: dict[str, list[Speaker]] = {}
    for accent in cfg.accents:
        rng = np.random.default_rng([cfg.seed, 1, _accent_key(accent)])
        if cfg.variants:
            order = [cfg.variants[i] for i in rng.permutation(len(cfg.variants))]
        else:
            pools = [[v for v in DEFAULT_VARIANTS if genders.get(v) == g] for g in ("male", "female")]
            pools = [[p[i] for i in rng.permutation(len(p))] for p in pools if p]
            if int(rng.integers(2)) and len(pools) == 2:
                pools.reverse()
            order = [p[i] for i in range(max(map(len, pools))) for p in pools if i < len(p)]
        speakers = []
        for k in range(cfg.speakers_per_accent):
            srng = np.random.default_rng([cfg.seed, 2, _accent_key(accent), k])
            variant = order[k % len(order)]
            speakers.append(Speaker(
                id=f"{accent}_s{k + 1}", accent=accent, voice=f"{voices[accent]}+{variant}", variant=variant,
                gender=genders.get(variant, "unknown"),
                pitch=int(srng.integers(cfg.pitch[0], cfg.pitch[1] + 1)),
                rate=int(srng.integers(cfg.rate[0], cfg.rate[1] + 1)),
            ))
        out[accent] = speakers
    return out


def plan(cfg: SyntheticConfig, sentences: list[str]) -> list[PlannedUtterance]:
    """Utterance i: accent i mod A; round i // A, where all accents say the same sentence."""
    speakers = plan_speakers(cfg)
    n_acc, n_sent, k = len(cfg.accents), len(sentences), cfg.speakers_per_accent
    perms: dict[int, np.ndarray] = {}
    out = []
    for i in range(cfg.n):
        rnd = i // n_acc
        cycle, pos = divmod(rnd, n_sent)
        if cycle not in perms:  # a fresh sentence order each time the list is used up
            perms[cycle] = np.random.default_rng([cfg.seed, 3, cycle]).permutation(n_sent)
        s = int(perms[cycle][pos])
        spk = speakers[cfg.accents[i % n_acc]][rnd % k]
        noise_seed = int(np.random.default_rng([cfg.seed, 4, i]).integers(1, 2**31 - 1))
        out.append(PlannedUtterance(id=f"{spk.id}_{i:05d}", speaker=spk, sentence=s, text=sentences[s],
                                    noise_seed=noise_seed))
    return out


def identity(cfg: SyntheticConfig, sentences: list[str]) -> dict[str, Any]:
    """Everything the corpus' bytes depend on (hashed into the cache folder name)."""
    d = dataclasses.asdict(cfg)
    d["sentences"] = hashlib.sha256("\n".join(sentences).encode()).hexdigest()
    d.update(format=FORMAT_VERSION, espeak=engine().version, sample_rate=engine().sample_rate)
    return json.loads(json.dumps(d))  # tuples -> lists, so it compares equal to what is read back


def identity_hash(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Writing the corpus (once; resumable)


def ensure_corpus(cfg: SyntheticConfig, root: Path, jobs: int = 2, progress: bool = True) -> Path:
    """Make sure ``root`` holds the complete corpus for ``cfg``; synthesize what is missing."""
    sentences = read_sentences(cfg.sentences or bundled_sentences())
    ident = identity(cfg, sentences)
    key = identity_hash(ident)
    root = Path(root)
    marker = root / COMPLETE
    if marker.is_file() and _marker_key(marker) == key:
        return root
    _claim(root, ident, key)
    utts = plan(cfg, sentences)
    todo = [u for u in utts if not ((root / u.wav).is_file() and (root / u.textgrid).is_file())]
    if todo:
        _synthesize(root, todo, cfg.pad, jobs, progress)
    rows = [_manifest_row(u) for u in utts]
    with atomic_path(root / "manifest.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    write_json(marker, {"key": key, "n": len(utts)})  # last: its presence means "complete"
    return root


def _marker_key(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def _claim(root: Path, ident: dict[str, Any], key: str) -> None:
    """Refuse to write into a folder that holds something else; record what this folder holds."""
    settings = root / SETTINGS
    if settings.is_file():
        try:
            old = json.loads(settings.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict) or old.get("key") != key:
            diff = _describe_diff(old.get("identity", {}) if isinstance(old, dict) else {}, ident)
            raise CodeclensError(
                f"synthetic: {root} holds a synthetic corpus made with other options ({diff}); "
                "use another folder or delete it"
            )
    elif root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise CodeclensError(f"synthetic: {root} is not empty and is not a synthetic corpus; choose an empty folder")
    (root / COMPLETE).unlink(missing_ok=True)
    write_json(settings, {"key": key, "identity": ident})


def _describe_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4]) or "unreadable settings"


def _synthesize(root: Path, todo: list[PlannedUtterance], pad: float, jobs: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    for stale in root.glob(".work-*"):  # left by a run that was killed
        pid = stale.name.removeprefix(".work-")
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    work = root / f".work-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    by_id = {u.id: u for u in todo}
    job_list = [Job(key=u.id, text=u.text, voice=u.speaker.voice, pitch=u.speaker.pitch, rate=u.speaker.rate,
                    seed=u.noise_seed, out=str(work / f"{u.id}.raw")) for u in todo]
    try:
        bar = tqdm(total=len(job_list), desc="synthesizing", unit="utt", disable=not progress or None)
        for job, err in IsolatedSynthesizer(jobs).run(job_list):
            utt = by_id[job.key]
            if err is not None:
                raise CodeclensError(f"synthetic: eSpeak NG failed on {utt.id} ({utt.text!r}): {err}")
            syn = add_padding(assign_closures(load_raw(job.out)), pad)
            _write_utterance(root, utt, syn)
            os.unlink(job.out)
            bar.update()
        bar.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_utterance(root: Path, utt: PlannedUtterance, syn: Synthesis) -> None:
    from .textgrid import write_textgrid

    sr = syn.sample_rate
    wav = root / utt.wav
    wav.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(wav, suffix=".wav") as tmp:
        write_wav(tmp, syn.audio, sr)
    tiers = {
        "phones": [Interval(s.start / sr, s.end / sr, s.label) for s in syn.phones],
        "words": [Interval(s.start / sr, s.end / sr, s.label) for s in syn.words],
    }
    tg = root / utt.textgrid
    tg.parent.mkdir(parents=True, exist_ok=True)
    write_textgrid(tg, tiers, xmax=len(syn.audio) / sr)


def write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    """16-bit mono PCM WAV (the stdlib writer: byte-identical for equal audio, and no fsync per file)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.ascontiguousarray(audio, dtype="<i2").tobytes())


def _manifest_row(u: PlannedUtterance) -> dict[str, Any]:
    s = u.speaker
    return {"id": u.id, "path": u.wav, "speaker": s.id, "accent": s.accent, "gender": s.gender,
            "textgrid": u.textgrid, "text": u.text, "sentence": u.sentence, "voice": s.voice,
            "variant": s.variant, "pitch": s.pitch, "rate": s.rate}


# ----------------------------------------------------------------------------------------------
# Reading


@CORPORA.register("synthetic")
class SyntheticCorpus(Corpus):
    """English speech synthesized with eSpeak NG, written once to disk and read back from it."""

    options = ("n", "seed", "accents", "speakers_per_accent", "variants", "pitch", "rate", "pad", "sentences",
               "out", "jobs", "progress")

    def __init__(self, spec: Spec):
        super().__init__(spec)
        self.config = config_from_spec(spec)
        if spec.target and "out" in spec.opts:
            raise CodeclensError("synthetic: give the output folder either as synthetic:DIR or as out=DIR, not both")
        out = spec.target or spec.opts.get("out", "")
        if out:
            self.root = Path(out).expanduser()
        else:
            sentences = read_sentences(self.config.sentences or bundled_sentences())
            self.root = cache_root() / "synthetic" / identity_hash(identity(self.config, sentences))
        jobs = spec.get("jobs", min(2, os.cpu_count() or 1), int)
        if jobs < 1:
            raise CodeclensError(f"synthetic: jobs must be at least 1, got {jobs}")
        ensure_corpus(self.config, self.root, jobs=jobs, progress=spec.get("progress", True, bool))
        # Read back through the generic manifest corpus: the same code path as a recorded corpus.
        self._reader = CORPORA.get("manifest").from_spec(Spec("manifest", str(self.root / "manifest.csv")))

    @property  # type: ignore[override]
    def problems(self) -> list[Problem]:
        reader = self.__dict__.get("_reader")
        return reader.problems if reader is not None else self.__dict__.setdefault("_problems", [])

    @problems.setter
    def problems(self, value: list[Problem]) -> None:
        self.__dict__["_problems"] = value

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self._reader)

    def __len__(self) -> int:
        return len(self._reader)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(root=str(self.root), n=self.config.n, accents=list(self.config.accents),
                 speakers_per_accent=self.config.speakers_per_accent, espeak=engine().version)
        return d
