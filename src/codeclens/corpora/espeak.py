"""A small ctypes wrapper over the eSpeak NG C library shipped by ``espeakng-loader``.

What it gives: the list of voices and voice variants (``espeak_ListVoices``),
and :meth:`Engine.synthesize`, which returns 16-bit audio at eSpeak's own rate
(22050 Hz) with the phone and word segmentation read from the synthesizer's own
events. Each event carries the exact sample index where it happened, so phone
boundaries are exact, not estimated.

Determinism. eSpeak NG keeps synthesis state between calls (wave generator
phase, flutter, echo buffers) and seeds its noise generator from the clock, so
the same text synthesized twice in one process can differ by tens of samples;
``espeak_Terminate``/``espeak_Initialize`` do not reset that state.
:class:`IsolatedSynthesizer` therefore runs this file as a small helper process
that initialises eSpeak once and forks a fresh child per utterance, which seeds
the noise generator and synthesizes: every child starts from the same pristine
state, so an utterance's audio depends only on its own (text, voice, pitch,
rate, seed), not on what was synthesized before it or on how many children run
at once.

The library is process-global C state: use :func:`engine` (one per process).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Run as the helper script: keep this folder's modules off the import path.
    sys.path.pop(0)

import ctypes
import dataclasses
import functools
import json
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

if __name__ == "__main__":
    # The helper forks once per utterance; without numpy and the package it forks ~3x faster.
    class CodeclensError(Exception):
        pass
else:
    import numpy as np

    from ..errors import CodeclensError

# Constants of eSpeak NG's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 0x02
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_PITCH = 3

PITCH_RANGE = (0, 100)
"""eSpeak's base-pitch parameter (50 = the voice's own pitch)."""
RATE_RANGE = (80, 450)
"""eSpeak's speaking rate in words per minute (175 = default)."""

SILENCE = ""
"""Label of pauses and padding in the phone tier (the TextGrid convention for gaps)."""


class EspeakError(CodeclensError):
    """eSpeak NG is missing, cannot start, or was asked for something it does not have."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated name)* then a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclasses.dataclass(frozen=True)
class Voice:
    """A voice as listed by ``espeak_ListVoices``."""

    name: str
    """Display name, e.g. ``English (Scotland)``."""
    languages: tuple[str, ...]
    """Language codes it serves, best first, e.g. ``('en-gb-scotland',)``."""
    identifier: str
    """File path below ``voices``/``lang``, e.g. ``gmw/en-GB-scotland``: always accepted by SetVoiceByName."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """A voice variant (``+m3``, ``+f2``...): formants, pitch range, breathiness."""

    name: str
    """Name used after ``+`` (the file name below ``voices/!v``)."""
    title: str
    """The variant's own display name."""
    gender: str
    """``male``, ``female`` or ``unknown``, from the variant file's ``gender`` line."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """A labelled span of samples ``[start, end)``."""

    start: int
    end: int
    label: str


@dataclasses.dataclass(frozen=True)
class Synthesis:
    """Audio of one utterance with the synthesizer's own segmentation."""

    audio: np.ndarray
    """int16 samples."""
    sample_rate: int
    phones: tuple[Segment, ...]
    """Contiguous, covering ``[0, len(audio))``; pauses are labelled :data:`SILENCE`."""
    words: tuple[Segment, ...]
    """One per spoken word, from its first to its last phone (gaps are pauses)."""

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


# ----------------------------------------------------------------------------------------------
# The engine (one per process)


class Engine:
    """The process's eSpeak NG library, initialised for synchronous synthesis with IPA phoneme events."""

    def __init__(self) -> None:
        try:
            import espeakng_loader

            self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
            self.data_path = espeakng_loader.get_data_path()
        except (ImportError, OSError, RuntimeError) as e:
            raise EspeakError(f"cannot load eSpeak NG from espeakng-loader ({e})") from None
        lib = self._lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.restype = None
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(),
                                   _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA)
        if sr <= 0:
            raise EspeakError(f"eSpeak NG failed to initialise with data at {self.data_path}")
        self.sample_rate = int(sr)
        self.version = lib.espeak_Info(None).decode()
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []
        self._events: list[tuple[int, int, int, int, str]] = []
        # Kept on self: ctypes must not free the trampoline while eSpeak holds it.
        self._callback = _SYNTH_CALLBACK(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(ctypes.string_at(wav, 2 * n))
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            label = _phone_name(ev.id.string) if ev.type == _EVENT_PHONEME else ""
            self._events.append((ev.type, ev.sample, ev.text_position, ev.length, label))
            i += 1
        return 0

    @functools.cached_property
    def voices(self) -> tuple[Voice, ...]:
        """All language voices (not variants)."""
        return tuple(self._list(None))

    @functools.cached_property
    def variants(self) -> tuple[Variant, ...]:
        spec = _Voice()
        lang = ctypes.create_string_buffer(b"variant")  # alive until _list returns
        spec.languages = ctypes.addressof(lang)
        root = Path(self.data_path) / "voices"
        out = []
        for v in self._list(spec):
            ident = v.identifier  # "!v/m3"
            name = ident.split("/", 1)[1] if "/" in ident else ident
            out.append(Variant(name=name, title=v.name, gender=_variant_gender(root / ident)))
        return tuple(sorted(out, key=lambda v: v.name))

    def _list(self, spec: _Voice | None) -> list[Voice]:
        with self._lock:
            arr = self._lib.espeak_ListVoices(ctypes.byref(spec) if spec is not None else None)
        out, i = [], 0
        while arr[i]:
            v = arr[i].contents
            out.append(Voice(name=(v.name or b"").decode(), languages=_languages(v.languages),
                             identifier=(v.identifier or b"").decode()))
            i += 1
        return out

    def synthesize(self, text: str, voice: str, pitch: int | None = None, rate: int | None = None,
                   seed: int = 0) -> Synthesis:
        """Speak ``text`` with ``voice`` (a name SetVoiceByName accepts, e.g. ``gmw/en-US+f2``).

        ``pitch`` (0-100, default 50) and ``rate`` (words per minute, default 175)
        are eSpeak's parameters. ``seed`` seeds eSpeak's noise generator (breathy variants use it), which
        eSpeak otherwise seeds from the clock. Not deterministic across calls in
        one process (see the module doc); :class:`IsolatedSynthesizer` is.
        """
        pcm, events = self.synthesize_raw(text, voice, pitch, rate, seed)
        return synthesis_from_raw(pcm, self.sample_rate, events, text)

    def synthesize_raw(self, text: str, voice: str, pitch: int | None = None, rate: int | None = None,
                       seed: int = 0) -> tuple[bytes, list[tuple[int, int, int, int, str]]]:
        """Native-endian int16 PCM bytes and the events ``(type, sample, text_position, length, phone)``."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise EspeakError(f"eSpeak NG has no voice '{voice}'")
            # Always set both: eSpeak keeps the last values across calls.
            for param, value, (lo, hi), what in ((_PARAM_PITCH, 50 if pitch is None else pitch, PITCH_RANGE, "pitch"),
                                                  (_PARAM_RATE, 175 if rate is None else rate, RATE_RANGE, "rate")):
                if not lo <= value <= hi:
                    raise EspeakError(f"eSpeak {what} {value} is outside {lo}..{hi}")
                self._lib.espeak_SetParameter(param, int(value), 0)
            self._lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
            self._chunks, self._events = [], []
            raw = text.encode("utf-8")
            buf = ctypes.create_string_buffer(raw)
            err = self._lib.espeak_Synth(buf, len(raw) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            pcm, events = b"".join(self._chunks), self._events
            self._chunks, self._events = [], []
        if err != 0:
            raise EspeakError(f"eSpeak NG failed to synthesize {text!r} (error {err})")
        return pcm, events


def synthesis_from_raw(pcm: bytes, sample_rate: int, events: list, text: str) -> Synthesis:
    audio = np.frombuffer(pcm, dtype=np.int16).copy()
    phones, words = segments_from_events([tuple(e) for e in events], len(audio), text)
    return Synthesis(audio=audio, sample_rate=sample_rate, phones=phones, words=words)


_ENGINE: Engine | None = None


def engine() -> Engine:
    """The process's eSpeak NG engine (initialised on first use)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Engine()
    return _ENGINE


def _phone_name(raw: bytes) -> str:
    # eSpeak copies at most 8 bytes of the IPA name, so a long name can end mid-character.
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="ignore")


def _languages(ptr: int | None) -> tuple[str, ...]:
    if not ptr:
        return ()
    out = []
    off = 0
    while True:
        prio = ctypes.c_ubyte.from_address(ptr + off).value
        if prio == 0:
            break
        name = ctypes.string_at(ptr + off + 1)
        out.append(name.decode(errors="replace"))
        off += len(name) + 2
    return tuple(out)


def _variant_gender(path: Path) -> str:
    # espeak_ListVoices reports "male" for variant files that state no gender, so read the file.
    try:
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].lower() == "gender":
                g = parts[1].lower()
                return g if g in ("male", "female") else "unknown"
    except OSError:
        pass
    return "unknown"


# ----------------------------------------------------------------------------------------------
# Events -> phone and word segments


_WORD_CHARS = re.compile(r"[\w'’-]+")


def segments_from_events(
    events: Iterable[tuple[int, int, int, int, str]], n_samples: int, text: str
) -> tuple[tuple[Segment, ...], tuple[Segment, ...]]:
    """Phone and word segments from eSpeak events ``(type, sample, text_position, length, phone)``.

    A phone runs from its event to the next phone event (the last one to the end
    of the audio); pause phonemes (empty names) and any audio before the first
    phone are :data:`SILENCE`. eSpeak emits a word's start event, then the
    word's pre-pause (the silent closure of a word-initial stop, or the onset of
    a vowel after a liquid or nasal), then the first phone's event: that span
    belongs to the first phone, so the phone starts at the word event.
    """
    phones: list[list[Any]] = []  # [start, label, word index or -1]
    words: list[tuple[int, str]] = []  # (start sample, text)
    pending_word: tuple[int, int] | None = None  # (sample, word index) of a word event awaiting its first phone
    last = 0
    for etype, sample, pos, length, label in events:
        sample = min(max(int(sample), last), n_samples)  # events are ordered; guard anyway
        last = sample
        if etype == _EVENT_WORD:
            words.append((sample, _word_text(text, pos, length)))
            pending_word = (sample, len(words) - 1)
        elif etype == _EVENT_PHONEME:
            if label == SILENCE:
                phones.append([sample, SILENCE, -1])
                pending_word = None
                continue
            start, widx = sample, (len(words) - 1 if words else -1)
            if pending_word is not None:
                start, widx = pending_word
                pending_word = None
            phones.append([start, label, widx])
    segs: list[Segment] = []
    owner: list[int] = []
    bounds = [p[0] for p in phones] + [n_samples]
    if phones and phones[0][0] > 0:
        segs.append(Segment(0, phones[0][0], SILENCE))
        owner.append(-1)
    elif not phones and n_samples > 0:
        segs.append(Segment(0, n_samples, SILENCE))
        owner.append(-1)
    for j, (start, label, widx) in enumerate(phones):
        end = bounds[j + 1]
        if end <= start:
            continue
        if label == SILENCE and segs and segs[-1].label == SILENCE:
            segs[-1] = Segment(segs[-1].start, end, SILENCE)
            continue
        segs.append(Segment(start, end, label))
        owner.append(widx)
    word_segs = []
    for w, (_, wtext) in enumerate(words):
        mine = [s for s, o in zip(segs, owner) if o == w and s.label != SILENCE]
        if mine:
            word_segs.append(Segment(mine[0].start, mine[-1].end, wtext))
    return tuple(segs), tuple(word_segs)


def _word_text(text: str, pos: int, length: int) -> str:
    # text_position is 1-based in characters; eSpeak's length can stop short of "n't",
    # so take the whole run of word characters starting there.
    start = max(pos - 1, 0)
    m = _WORD_CHARS.match(text, start)
    if m:
        return m.group(0).strip("'’-")
    return text[start:start + max(length, 0)].strip()


_STOP_START = re.compile(r"^[ˈˌ]?(?:[pbtdkgɡqcɟʔ])")


def is_stop(label: str) -> bool:
    """Plosives and affricates (IPA, stress mark allowed): phones whose closure is silent."""
    return bool(_STOP_START.match(label))


def assign_closures(syn: Synthesis, min_samples: int = 44) -> Synthesis:
    """Give a stop the silent closure that eSpeak renders before its event.

    eSpeak marks a stop where its release starts; the closure (a run of exact
    zero samples) is rendered just before, so it would otherwise belong to the
    preceding phone. Within words there is no event to place it by, so it is
    found in the audio: the run of zeros ending at the stop's event moves to the
    stop when it is at least ``min_samples`` long and the preceding phone keeps
    some sound. Voices with an echo (variants m2, f2-f5) fill closures with the
    echo, so there the boundary stays at the event.
    """
    phones = list(syn.phones)
    audio = syn.audio
    for j in range(1, len(phones)):
        prev, cur = phones[j - 1], phones[j]
        if prev.label == SILENCE or not is_stop(cur.label):
            continue
        seg = audio[prev.start:cur.start]
        nz = np.flatnonzero(seg)
        if nz.size == 0:
            continue  # the previous phone is all silence; keep eSpeak's boundary
        cut = prev.start + int(nz[-1]) + 1
        if cur.start - cut >= min_samples:
            phones[j - 1] = Segment(prev.start, cut, prev.label)
            phones[j] = Segment(cut, cur.end, cur.label)
    if phones == list(syn.phones):
        return syn
    # Words start and end with their phones.
    starts = {p.start for p in syn.phones}
    moved = {old.start: new.start for old, new in zip(syn.phones, phones) if old.start != new.start}
    moved_end = {old.end: new.end for old, new in zip(syn.phones, phones) if old.end != new.end}
    words = tuple(Segment(moved.get(w.start, w.start) if w.start in starts else w.start,
                          moved_end.get(w.end, w.end), w.label) for w in syn.words)
    return dataclasses.replace(syn, phones=tuple(phones), words=words)


def add_padding(syn: Synthesis, seconds: float) -> Synthesis:
    """Digital silence before and after, labelled :data:`SILENCE` (merged with edge pauses)."""
    pad = int(round(seconds * syn.sample_rate))
    if pad <= 0:
        return syn
    audio = np.concatenate([np.zeros(pad, np.int16), syn.audio, np.zeros(pad, np.int16)])
    n = len(audio)
    phones = [Segment(s.start + pad, s.end + pad, s.label) for s in syn.phones]
    if phones and phones[0].label == SILENCE:
        phones[0] = Segment(0, phones[0].end, SILENCE)
    else:
        phones.insert(0, Segment(0, pad, SILENCE))
    if phones[-1].label == SILENCE:
        phones[-1] = Segment(phones[-1].start, n, SILENCE)
    else:
        phones.append(Segment(phones[-1].end, n, SILENCE))
    words = tuple(Segment(s.start + pad, s.end + pad, s.label) for s in syn.words)
    return Synthesis(audio=audio, sample_rate=syn.sample_rate, phones=tuple(phones), words=words)


# ----------------------------------------------------------------------------------------------
# Deterministic synthesis: a helper process forks a pristine child per utterance


@dataclasses.dataclass(frozen=True)
class Job:
    """One utterance to synthesize; the result goes to ``out`` (see :func:`save_raw`)."""

    key: str
    text: str
    voice: str
    pitch: int | None
    rate: int | None
    seed: int
    out: str


def save_raw(path: str, sample_rate: int, text: str, pcm: bytes, events: list) -> None:
    """One line of JSON (rate, text, events) then the PCM bytes; written atomically."""
    tmp = f"{path}.{os.getpid()}.tmp"
    head = json.dumps({"sample_rate": sample_rate, "text": text, "byteorder": sys.byteorder, "events": events})
    with open(tmp, "wb") as f:
        f.write(head.encode("utf-8") + b"\n")
        f.write(pcm)
    os.replace(tmp, path)


def load_raw(path: str | os.PathLike) -> Synthesis:
    """A :class:`Synthesis` from a file written by :func:`save_raw`."""
    data = Path(path).read_bytes()
    nl = data.index(b"\n")
    head = json.loads(data[:nl])
    pcm = data[nl + 1:]
    if head["byteorder"] != sys.byteorder:
        pcm = np.frombuffer(pcm, np.int16).byteswap().tobytes()
    return synthesis_from_raw(pcm, head["sample_rate"], head["events"], head["text"])


class IsolatedSynthesizer:
    """Synthesize jobs, each in a freshly forked copy of a never-used eSpeak process.

    ``run(jobs)`` yields ``(job, error or None)`` as children finish (not in job
    order); on success the result is in ``job.out`` (:func:`load_raw`).
    ``workers`` children run at once; the output does not depend on it.
    """

    def __init__(self, workers: int = 1):
        if not hasattr(os, "fork"):
            raise EspeakError("deterministic synthesis needs os.fork (Linux or macOS)")
        self.workers = max(1, int(workers))

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, str | None]]:
        jobs = list(jobs)
        if not jobs:
            return
        by_key = {j.key: j for j in jobs}
        if len(by_key) != len(jobs):
            raise ValueError("job keys must be unique")
        # This file run as a script: only ctypes and the standard library in the forking process.
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(self.workers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        done: set[str] = set()
        try:
            assert proc.stdin is not None and proc.stdout is not None
            # The helper reads every job before it answers, so this cannot deadlock.
            for j in jobs:
                proc.stdin.write(json.dumps(dataclasses.asdict(j)) + "\n")
            proc.stdin.close()
            for line in proc.stdout:
                msg = json.loads(line)
                done.add(msg["key"])
                yield by_key[msg["key"]], msg.get("error")
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if len(done) != len(jobs):
            err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
            raise EspeakError(f"the eSpeak helper process stopped early (exit {proc.returncode}): "
                              f"{err[-1] if err else 'no message'}")


def _serve(workers: int) -> int:
    """Helper-process loop: read jobs (JSON lines) from stdin, fork one child per job."""
    eng = engine()  # initialised here, never used for synthesis in this process
    _ = eng.sample_rate
    jobs = [Job(**json.loads(line)) for line in sys.stdin if line.strip()]
    running: dict[int, Job] = {}

    def reap() -> None:
        pid, status = os.wait()
        job = running.pop(pid)
        err = None
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            try:
                err = Path(job.out + ".err").read_text().strip() or "synthesis failed"
                os.unlink(job.out + ".err")
            except OSError:
                err = f"synthesis process died (status {status})"
        sys.stdout.write(json.dumps({"key": job.key, "error": err}) + "\n")
        sys.stdout.flush()

    for job in jobs:
        while len(running) >= workers:
            reap()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # child: one utterance, then leave without running any Python cleanup
            code = 0
            try:
                pcm, events = eng.synthesize_raw(job.text, job.voice, job.pitch, job.rate, job.seed)
                save_raw(job.out, eng.sample_rate, job.text, pcm, events)
            except BaseException as e:  # noqa: BLE001  (reported to the parent as text)
                code = 1
                try:
                    Path(job.out + ".err").write_text(f"{type(e).__name__}: {e}")
                except OSError:
                    pass
            os._exit(code)
        running[pid] = job
    while running:
        reap()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        sys.exit(_serve(int(sys.argv[2])))
    sys.exit("usage: python espeak.py --serve WORKERS")
