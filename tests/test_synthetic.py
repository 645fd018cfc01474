"""The eSpeak NG synthetic corpus: deterministic, exactly aligned, accents that really differ."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from codeclens.corpora import load_corpus
from codeclens.corpora.espeak import (SILENCE, Segment, Synthesis, assign_closures, engine, is_stop,
                                      segments_from_events)
from codeclens.corpora.synthetic import default_accents, read_sentences
from codeclens.corpora.textgrid import read_textgrid
from codeclens.errors import CodeclensError

SR = 22050
PARK = "I can't park the car in the yard."


@pytest.fixture(scope="module")
def sentences(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("sent") / "s.txt"
    p.write_text(f"# test sentences\n{PARK}\n\nShe measured the beige fabric with unusual precision.\n")
    return p


def _spec(out: Path, sentences: Path, **opts) -> str:
    base = {"n": 4, "seed": 0, "accents": "en-us,en-gb", "speakers_per_accent": 1, "sentences": str(sentences),
            "progress": 0}
    base.update(opts)
    return f"synthetic:{out}?" + "&".join(f"{k}={v}" for k, v in base.items())


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, sentences) -> Path:
    out = tmp_path_factory.mktemp("syn") / "a"
    load_corpus(_spec(out, sentences))
    return out


def _tg(utt) -> dict:
    root = Path(utt.path).parents[2]
    return read_textgrid(root / "textgrid" / utt.speaker / (Path(utt.path).stem + ".TextGrid"))


def test_same_options_same_bytes_other_seed_other_bytes(corpus_dir, sentences, tmp_path):
    again = tmp_path / "b"
    load_corpus(_spec(again, sentences, jobs=1))  # other worker count: must not matter
    assert _digest(again) == _digest(corpus_dir)
    other = tmp_path / "c"
    load_corpus(_spec(other, sentences, seed=1))
    d0, d1 = _digest(corpus_dir), _digest(other)
    assert d0["manifest.csv"] != d1["manifest.csv"]
    wav0 = sorted(v for k, v in d0.items() if k.endswith(".wav"))
    wav1 = sorted(v for k, v in d1.items() if k.endswith(".wav"))
    assert not set(wav0) & set(wav1)


def test_reading_gives_utterances_with_metadata(corpus_dir, sentences):
    c = load_corpus(_spec(corpus_dir, sentences))
    utts = list(c)
    assert len(utts) == 4 and not c.problems
    assert [u.accent for u in utts] == ["en-us", "en-gb", "en-us", "en-gb"]
    extra = dict(utts[0].extra)
    assert extra["gender"] in ("male", "female") and isinstance(extra["pitch"], int)
    assert extra["voice"].startswith("gmw/en-US+")
    # Round 0: both accents say the same sentence.
    assert dict(utts[0].extra)["text"] == dict(utts[1].extra)["text"]
    header = (corpus_dir / "manifest.csv").read_text().splitlines()[0].split(",")
    for col in ("path", "speaker", "accent", "textgrid", "gender", "text", "voice", "pitch", "rate"):
        assert col in header
    audio, sr = utts[0].load()
    assert sr == SR and audio.dtype == np.float32


def test_phone_intervals_cover_the_audio_and_match_it(corpus_dir, sentences):
    for u in load_corpus(_spec(corpus_dir, sentences)):
        audio, sr = u.load()
        dur = len(audio) / sr
        ph = u.phones
        assert ph[0].start == 0.0
        assert abs(ph[-1].end - dur) <= 1 / sr
        assert all(abs(a.end - b.start) < 1e-6 for a, b in zip(ph, ph[1:]))
        assert all(iv.end > iv.start for iv in ph)
        # The padding is silence, labelled as such; speech has energy where the phones say so.
        assert ph[0].label == SILENCE and ph[-1].label == SILENCE
        assert ph[0].end >= 0.1 - 1e-6 and dur - ph[-1].start >= 0.1 - 1e-6
        spoken = [iv for iv in ph if iv.label != SILENCE]
        for iv in ph:
            x = audio[int(round(iv.start * sr)):int(round(iv.end * sr))]
            if iv.label == SILENCE:
                assert np.abs(x).max() == 0.0  # default variants add no echo: pauses are digital silence
        vowels = [iv for iv in spoken if any(v in iv.label for v in "aeiouɑɒæəɛɪʊʌɔɜ")]
        assert vowels and all(
            np.sqrt(np.mean(audio[int(round(iv.start * sr)):int(round(iv.end * sr))] ** 2)) > 0.01 for iv in vowels
        )
        # Words are made of whole phones.
        words = _tg(u)["words"]
        bounds = {round(iv.start, 6) for iv in ph} | {round(ph[-1].end, 6)}
        assert [w.label for w in words if w.label][:2] in (["I", "can't"], ["She", "measured"])
        assert all(round(w.start, 6) in bounds and round(w.end, 6) in bounds for w in words)


def test_accents_differ_on_the_same_sentence(corpus_dir, sentences):
    utts = [u for u in load_corpus(_spec(corpus_dir, sentences)) if dict(u.extra)["text"] == PARK]
    by_acc = {u.accent: u for u in utts}
    us, gb = by_acc["en-us"], by_acc["en-gb"]
    seq = {a: [iv.label for iv in u.phones if iv.label] for a, u in by_acc.items()}
    assert seq["en-us"] != seq["en-gb"]

    def word_phones(u, word):
        w = next(w for w in _tg(u)["words"] if w.label == word)
        return "".join(iv.label for iv in u.phones if iv.start >= w.start - 1e-6 and iv.end <= w.end + 1e-6)

    # Rhotic American "park" keeps its r; non-rhotic British "park" has none.
    assert "ɹ" in word_phones(us, "park") and "ɹ" not in word_phones(gb, "park") and "ɑː" in word_phones(gb, "park")
    # The BATH vowel: American "can't" has the TRAP vowel, British the long PALM vowel.
    assert "æ" in word_phones(us, "can't") and "ɑː" in word_phones(gb, "can't")


def _median_f0(u) -> float:
    """Median over vowels of the autocorrelation pitch (60-500 Hz) of each vowel's middle 40 ms."""
    audio, sr = u.load()
    lo, hi = int(sr / 500), int(sr / 60)
    f0 = []
    for iv in u.phones:
        if not any(v in iv.label for v in "aeiouɑɒæəɛɪʊʌɔɜ") or iv.end - iv.start < 0.06:
            continue
        mid = int((iv.start + iv.end) / 2 * sr)
        x = audio[mid - int(0.02 * sr):mid + int(0.02 * sr)].astype(np.float64)
        x = x - x.mean()
        ac = np.correlate(x, x, "full")[len(x) - 1:]
        f0.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    assert len(f0) >= 3
    return float(np.median(f0))


def test_pitch_and_variants_change_the_voice(sentences, tmp_path):
    f0 = {}
    for name, opts in {"low": dict(variants="m3", pitch=20), "high": dict(variants="m3", pitch=80),
                       "female": dict(variants="f1", pitch=20)}.items():
        (u,) = list(load_corpus(_spec(tmp_path / name, sentences, n=1, accents="en-us", **opts)))
        f0[name] = (_median_f0(u), hashlib.sha256(Path(u.path).read_bytes()).hexdigest(), dict(u.extra))
    assert f0["high"][0] > 1.2 * f0["low"][0]
    assert f0["female"][0] > 1.4 * f0["low"][0]
    assert len({v[1] for v in f0.values()}) == 3
    assert f0["female"][2]["gender"] == "female" and f0["low"][2]["gender"] == "male"
    assert f0["low"][2]["pitch"] == 20 and f0["high"][2]["pitch"] == 80


def test_resume_completes_a_partial_corpus_identically(corpus_dir, sentences, tmp_path):
    import shutil

    part = tmp_path / "part"
    shutil.copytree(corpus_dir, part)
    (part / "COMPLETE").unlink()
    (part / "manifest.csv").unlink()
    victims = sorted(part.rglob("*.wav"))[:2]
    for v in victims:
        v.unlink()
    next(iter(sorted(part.rglob("*.TextGrid")))).unlink()
    load_corpus(_spec(part, sentences))
    assert _digest(part) == _digest(corpus_dir)


def test_folder_with_other_content_is_refused(corpus_dir, sentences, tmp_path):
    with pytest.raises(CodeclensError, match="other options"):
        load_corpus(_spec(corpus_dir, sentences, seed=5))
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(CodeclensError, match="not empty"):
        load_corpus(_spec(tmp_path, sentences))


def test_default_folder_is_a_cache_keyed_by_options(sentences, tmp_path, monkeypatch):
    monkeypatch.setenv("CODECLENS_CACHE", str(tmp_path))
    spec = f"synthetic?n=1&accents=en-gb-scotland&speakers_per_accent=1&sentences={sentences}&progress=0"
    c = load_corpus(spec)
    roots = list((tmp_path / "synthetic").iterdir())
    assert len(roots) == 1 and (roots[0] / "COMPLETE").is_file() and Path(c.describe()["root"]) == roots[0]
    assert list(c)[0].accent == "en-gb-scotland"


@pytest.mark.parametrize("bad, match", [
    ("synthetic?n=2&colour=red", "unknown option"),
    ("synthetic?n=0", "n must be"),
    ("synthetic?accents=en-us,en-xx", "unknown accent"),
    ("synthetic?variants=nobody", "unknown voice variant"),
    ("synthetic?pitch=90-10", "pitch range"),
    ("synthetic?rate=fast", "rate="),
    ("synthetic?n=two", "not a valid int"),
    ("synthetic?sentences=/no/such/file.txt", "not found"),
    ("synthetic:/tmp/x?out=/tmp/y", "not both"),
])
def test_bad_options_give_one_line_errors(bad, match):
    with pytest.raises(CodeclensError, match=match) as e:
        load_corpus(bad)
    assert "\n" not in str(e.value)


def test_cli_reports_bad_synthetic_spec_in_one_line(tmp_path, capsys):
    from codeclens.cli import main

    code = main(["extract", "--corpus", "synthetic?accents=en-zz", "--codec", "melrvq", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown accent" in err[0]


def test_voice_discovery_lists_the_english_accents():
    acc = default_accents()
    for a in ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029"):
        assert a in acc
    assert acc[:5] == ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029")
    assert "en-shaw" not in acc and len(acc) >= 8
    genders = {v.name: v.gender for v in engine().variants}
    assert genders["m3"] == "male" and genders["f1"] == "female"


def test_bundled_sentences_are_many_and_short():
    from codeclens.corpora.synthetic import bundled_sentences

    lines = read_sentences(bundled_sentences())
    assert len(lines) >= 150 and len(set(lines)) == len(lines)
    assert all(5 <= len(s.split()) <= 15 for s in lines)


def test_segments_from_events_rules():
    # (type, sample, text_position, length, phone): word "at" (pos 1), pause, word "go" (pos 4).
    W, P = 1, 7
    events = [(W, 0, 1, 2, ""), (P, 0, 1, 0, "a"), (P, 50, 1, 0, "t"), (P, 80, 4, 0, ""), (P, 80, 4, 0, ""),
              (W, 120, 4, 2, ""), (P, 150, 4, 0, "ɡ"), (P, 190, 4, 0, "ˈoʊ"), (P, 260, 6, 0, "")]
    phones, words = segments_from_events(events, 300, "at go")
    assert phones == (Segment(0, 50, "a"), Segment(50, 80, "t"), Segment(80, 120, SILENCE),
                      Segment(120, 190, "ɡ"),  # starts at the word event: the closure is the stop's
                      Segment(190, 260, "ˈoʊ"), Segment(260, 300, SILENCE))
    assert words == (Segment(0, 80, "at"), Segment(120, 260, "go"))
    # No events at all: one silence interval covering the audio.
    assert segments_from_events([], 10, "") == ((Segment(0, 10, SILENCE),), ())


def test_assign_closures_moves_the_silent_run_to_the_stop():
    audio = np.ones(100, np.int16)
    audio[60:80] = 0  # closure rendered at the end of the 'l'
    syn = Synthesis(audio=audio, sample_rate=SR, phones=(Segment(0, 80, "l"), Segment(80, 100, "d")),
                    words=(Segment(0, 100, "ld"),))
    out = assign_closures(syn, min_samples=10)
    assert out.phones == (Segment(0, 60, "l"), Segment(60, 100, "d"))
    assert assign_closures(syn, min_samples=30).phones == syn.phones  # too short a run: unchanged
    assert is_stop("ˈt") and is_stop("dʒ") and not is_stop("ð") and not is_stop("θ")
