"""Labellers against known answers: brute-force phone mapping, tones of known pitch,
silence and noise, RMS of known signals, k-means units from a tiny HuBERT, and an
end-to-end extraction over a manifest corpus."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import soundfile as sf

from codeclens.corpora.base import Interval, Utterance
from codeclens.corpora.textgrid import write_textgrid
from codeclens.errors import CodeclensError
from codeclens.labels import LABELLERS, frame_times, load_labeller
from codeclens.labels.phones import (CLASSES, INVENTORY, max_overlap_labels, normalize_phone, phone_class,
                                     phone_index)

# ---------------------------------------------------------------------------- phones


def brute_force(starts, ends, labels, times, frame_rate):
    """Reference: every frame against every interval, largest overlap (to 1 ns), earliest on ties."""
    half = 0.5 / float(frame_rate)
    fs, fe = np.asarray(times) - half, np.asarray(times) + half
    out = []
    for a, b in zip(fs, fe):
        best, best_ov = None, 0.0
        for s, e, lab in zip(starts, ends, labels):
            ov = min(float(e), float(b)) - max(float(s), float(a))
            if ov > best_ov + 1e-9:
                best, best_ov = lab, ov
        out.append(best)
    return out


def random_intervals(rng, frame_rate, duration):
    """Sorted, non-overlapping intervals with gaps, zero-length ones, and many boundaries
    exactly on frame edges and frame centres."""
    n = int(rng.integers(1, 40))
    grid = np.concatenate([np.arange(0, duration, 1 / frame_rate), np.arange(0.5 / frame_rate, duration, 1 / frame_rate)])
    pts = np.concatenate([rng.choice(grid, n), rng.uniform(0, duration, n)])
    pts = np.sort(rng.choice(pts, size=2 * n, replace=True))
    starts, ends, labels = [], [], []
    for k in range(0, len(pts) - 1, 2):
        if rng.random() < 0.3 and starts:
            # Touching the previous interval (no gap).
            s = ends[-1]
        else:
            s = pts[k]
        e = max(s, pts[k + 1])
        if starts and s < ends[-1]:
            continue
        starts.append(float(s))
        ends.append(float(e))
        labels.append(f"p{len(labels)}")
    return np.array(starts), np.array(ends), labels


@pytest.mark.parametrize("frame_rate", [75.0, 50.0, 12.5])
def test_phone_mapping_equals_brute_force(frame_rate, rng):
    for _ in range(60):
        duration = float(rng.uniform(0.2, 3.0))
        starts, ends, labels = random_intervals(rng, frame_rate, duration)
        n = int(math.ceil(duration * frame_rate)) + 2  # a couple of frames past the alignment
        times = frame_times(n, frame_rate)
        assert max_overlap_labels(starts, ends, labels, times, frame_rate) == brute_force(
            starts, ends, labels, times, frame_rate
        )


def test_phone_mapping_known_answer():
    starts, ends, labels = np.array([0.0, 0.1]), np.array([0.1, 0.3]), ["a", "b"]
    # 50 Hz: frame 4 spans [0.08, 0.10) -> a; frame 5 spans [0.10, 0.12) -> b; frame 15 is past the end.
    got = max_overlap_labels(starts, ends, labels, frame_times(16, 50), 50)
    assert got[:5] == ["a"] * 5 and got[5:15] == ["b"] * 10 and got[15] is None
    # 12.5 Hz: frame 1 spans [0.08, 0.16): 0.02 s of a, 0.06 s of b -> b.
    assert max_overlap_labels(starts, ends, labels, frame_times(5, 12.5), 12.5) == ["a", "b", "b", "b", None]
    # An exact tie goes to the earlier interval: frame [0.0, 0.2) at 5 Hz holds 0.1 s of each.
    assert max_overlap_labels(np.array([0.0, 0.1]), np.array([0.1, 0.2]), ["a", "b"], frame_times(1, 5), 5) == ["a"]


def test_phone_labeller_normalises_and_marks_missing():
    lb = load_labeller("phone")
    utt = Utterance("u", "x.wav", phones=(Interval(0.0, 0.1, ""), Interval(0.1, 0.2, "AH0"), Interval(0.2, 0.3, "ˈʌ")))
    out = lb.frame_labels(utt, np.zeros(8000, np.float32), 16000, frame_times(25, 50), 50)
    assert list(out["phone"][:5]) == ["sil"] * 5
    assert list(out["phone"][5:10]) == ["ə"] * 5 and list(out["phone"][10:15]) == ["ʌ"] * 5
    assert all(p is None for p in out["phone"][15:])
    assert list(out["phone_class"][:15]) == ["silence"] * 5 + ["vowel"] * 10
    assert all(c is None for c in out["phone_class"][15:])
    none = lb.frame_labels(Utterance("v", "x.wav"), np.zeros(800, np.float32), 16000, frame_times(3, 50), 50)
    assert all(p is None for p in none["phone"])
    kept = load_labeller("phone?keep_stress=1").frame_labels(utt, np.zeros(8000, np.float32), 16000, frame_times(15, 50), 50)
    assert kept["phone"][12] == "ˈʌ" and kept["phone"][7] == "ə"


def test_phone_labeller_rejects_alignment_longer_than_audio():
    utt = Utterance("u", "x.wav", phones=(Interval(0.0, 2.0, "AA1"),))
    with pytest.raises(CodeclensError, match="alignment ends at 2.000 s but the audio lasts 1.000 s"):
        load_labeller("phone").frame_labels(utt, np.zeros(16000, np.float32), 16000, frame_times(50, 50), 50)


def test_inventory_folds_arpabet_and_espeak_ipa_to_one_symbol():
    pairs = [("AH0", "ə"), ("AH1", "ˈʌ"), ("AH2", "ˌʌ"), ("IY1", "ˈiː"), ("ER0", "ɚ"), ("ER1", "ˈɜː"),
             ("OW1", "ˈəʊ"), ("OW0", "oʊ"), ("EY1", "ˈeɪ"), ("AA1", "ˈɑː"), ("G", "ɡ"), ("G", "g"), ("R", "ɹ"),
             ("CH", "t͡ʃ"), ("JH", "dʒ"), ("HH", "h"), ("NG", "ŋ"), ("Y", "j"), ("DH", "ð"), ("T", "tʰ")]
    for arpa, ipa in pairs:
        assert normalize_phone(arpa) == normalize_phone(ipa), (arpa, ipa)
        assert normalize_phone(arpa) in INVENTORY
    assert normalize_phone("AH0") == "ə" and normalize_phone("AH1") == "ʌ"
    # Stress kept on request, from either notation; consonants never carry it.
    assert normalize_phone("IY1", keep_stress=True) == normalize_phone("ˈiː", keep_stress=True) == "ˈi"
    assert normalize_phone("AH2", keep_stress=True) == "ˌʌ" and normalize_phone("AH0", keep_stress=True) == "ə"
    for sil in ("", "sil", "SIL", "sp", "<eps>", "_", "pau", "h#"):
        assert normalize_phone(sil) == "sil"
    # Spoken noise and noise markers are missing, not silence (issue 12 item 4).
    for noise in ("spn", "SPN", "<unk>", "[noise]", "<SPOKEN_NOISE>", "<noise>", "nsn", "[laughter]"):
        assert normalize_phone(noise) is None, noise
    assert phone_class("sil") == "silence" and phone_class("ˈʌ") == "vowel" and phone_class("zz") == "other"
    assert phone_index("ˈʌ") == phone_index("ʌ") >= 0 and phone_index(None) == -1
    # Scottish FACE (eː) is not DRESS (e).
    assert normalize_phone("ˈeː") == "eɪ" and normalize_phone("e") == "ɛ"


# Every phone symbol eSpeak NG 1.52 produced for English test sentences in en, en-us,
# en-gb-scotland, en-gb-x-rp, en-029, en-gb-x-gbclan, en-gb-x-gbcwmd and en-us-nyc.
ESPEAK_SYMBOLS = (
    "a aɪ b d dʒ e ei f h i iː j k l m n n̩ oʊ oː p r s t tʃ t̪ uː v w x z ð ŋ ɐ ɒ ɔɪ ə əl əu əʊ ɚ ɛ ɜ ɡ "
    "ɪ ɹ ɾ ʃ ʉ ʊ ʌ ʌʊ ʍ ʒ ʔ ˈa ˈa: ˈaa ˈaɪ ˈaʊ ˈaː ˈe ˈei ˈeə ˈeɪ ˈeː ˈiə ˈiː ˈo ˈoə ˈoɪ ˈoʊ ˈoː ˈuː "
    "ˈæ ˈæʊ ˈɑə ˈɑː ˈɑːɹ ˈɒ ˈɔ ˈɔə ˈɔɪ ˈɔː ˈɔːɹ ˈəu ˈəɪ ˈəɹ ˈəʊ ˈɛ ˈɛə ˈɛɹ ˈɜː ˈɪ ˈɪɹ ˈʉ ˈʉɹ ˈʉː ˈʊ "
    "ˈʊə ˈʊɹ ˈʌ ˈʌɹ ˈʌʉ ˈʌʊ ˌiə ˌoʊ ˌoː ˌəʊ ˌɪ ˌɪɹ ˌʌʊ θ ᵻ"
).split()


def test_inventory_covers_espeak_english():
    for sym in ESPEAK_SYMBOLS:
        canon = normalize_phone(sym)
        assert canon in INVENTORY, (sym, canon)
        if any(ch in sym for ch in "ˈˌ"):
            assert phone_class(canon) == "vowel", sym
    assert {phone_class(s) for s in INVENTORY} == set(CLASSES)


# ---------------------------------------------------------------------------- f0


def tone(freq, seconds, sr, amp=0.3):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def pyin():
    return load_labeller("f0")


@pytest.mark.parametrize("freq", [110.0, 220.0, 330.0])
def test_f0_pyin_tones(pyin, freq):
    sr = 24000
    audio = tone(freq, 1.0, sr)
    for fr in (75.0, 12.5):
        times = frame_times(int(np.ceil(len(audio) / sr * fr)), fr)
        out = pyin.frame_labels(Utterance(f"t{freq}", "x"), audio, sr, times, fr)
        v = out["voiced"]
        assert v.dtype == bool and v.mean() >= 0.95
        assert np.all(np.abs(out["f0_hz"][v] / freq - 1) < 0.01)
        assert np.all(np.isnan(out["f0_hz"][~v]))
        np.testing.assert_allclose(out["f0_cents"][v], 1200 * np.log2(out["f0_hz"][v] / 55.0))
    ul = pyin.utterance_labels(Utterance(f"t{freq}", "x"), audio, sr)
    assert abs(ul["f0_median_hz"] / freq - 1) < 0.01 and ul["voiced_fraction"] > 0.95


def test_f0_silence_noise_and_empty_are_unvoiced(pyin):
    sr = 16000
    rng = np.random.default_rng(1)
    cases = {
        "silence": np.zeros(sr, np.float32),
        "noise": (0.2 * rng.standard_normal(sr)).astype(np.float32),
        "quiet": (1e-5 * rng.standard_normal(sr)).astype(np.float32),
        "empty": np.zeros(0, np.float32),
    }
    for name, audio in cases.items():
        times = frame_times(50, 50)
        out = pyin.frame_labels(Utterance(name, "x"), audio, sr, times, 50)
        assert (~out["voiced"]).mean() >= 0.95, name
        assert np.all(np.isnan(out["f0_hz"][~out["voiced"]])), name
        assert np.all(np.isnan(out["f0_cents"][~out["voiced"]])), name
    assert math.isnan(pyin.utterance_labels(Utterance("empty", "x"), cases["empty"], sr)["f0_median_hz"])


def test_f0_is_carried_to_frames_by_time(pyin):
    """220 Hz for 0.6 s then 330 Hz: frames are judged by their time span, at any rate."""
    sr = 16000
    audio = np.concatenate([tone(220, 0.6, sr), tone(330, 0.6, sr)])
    for fr in (75.0, 50.0, 12.5):
        times = frame_times(int(len(audio) / sr * fr), fr)
        out = pyin.frame_labels(Utterance(f"step{fr}", "x"), audio, sr, times, fr)
        before = times + 0.5 / fr < 0.55
        after = times - 0.5 / fr > 0.65
        f0 = out["f0_hz"]
        assert out["voiced"][before].all() and out["voiced"][after].all()
        assert np.all(np.abs(f0[before] / 220 - 1) < 0.01) and np.all(np.abs(f0[after] / 330 - 1) < 0.01)


@pytest.mark.parametrize("method", ["pyin", "crepe"])
def test_f0_silence_between_tones_is_unvoiced(method):
    """Issue 12 item 9: tone - 0.3 s digital silence - tone. The 64 ms pitch window reaches the tones
    from inside the gap; the voicing decision must be local to the frame, so gap frames are unvoiced."""
    sr = 16000
    lb = load_labeller("f0" if method == "pyin" else "f0?method=crepe&model=tiny&device=cpu")
    gap = (0.5, 0.8)
    audio = np.concatenate([tone(200, gap[0], sr), np.zeros(int(0.3 * sr), np.float32), tone(200, 0.5, sr)])
    for fr in (75.0, 50.0):
        times = frame_times(int(len(audio) / sr * fr), fr)
        out = lb.frame_labels(Utterance(f"gap{method}{fr}", "x"), audio, sr, times, fr)
        lo, hi = times - 0.5 / fr, times + 0.5 / fr
        silent = (lo >= gap[0]) & (hi <= gap[1])
        in_tone = (hi <= gap[0] - 0.04) | ((lo >= gap[1] + 0.04) & (hi <= len(audio) / sr - 0.04))
        assert silent.sum() >= 10
        assert not out["voiced"][silent].any(), (fr, np.flatnonzero(out["voiced"] & silent))
        assert np.isnan(out["f0_hz"][silent]).all()
        assert out["voiced"][in_tone].mean() >= 0.95


def test_spoken_noise_frames_have_no_phone(tmp_path):
    """An MFA-style LibriSpeech alignment: sil, spn (out-of-vocabulary word), AA1. Frames under spn
    get no phone (missing) rather than sil."""
    from codeclens.labels.phones import PhoneLabeller

    lb = load_labeller("phone")
    assert isinstance(lb, PhoneLabeller)
    utt = Utterance("u", "x.wav", phones=(Interval(0.0, 0.2, "sil"), Interval(0.2, 0.5, "spn"),
                                         Interval(0.5, 0.8, "AA1")))
    times = frame_times(40, 50)
    out = lb.frame_labels(utt, np.zeros(int(0.8 * 16000), np.float32), 16000, times, 50)
    ph = out["phone"]
    assert list(ph[:10]) == ["sil"] * 10 and list(ph[10:25]) == [None] * 15 and list(ph[25:]) == ["ɑ"] * 15
    assert list(out["phone_class"][10:25]) == [None] * 15


def test_f0_options_are_validated():
    for bad in ("f0?method=yin", "f0?fmin=500&fmax=100", "f0?model=huge", "f0?colour=red"):
        with pytest.raises(CodeclensError):
            load_labeller(bad)


def test_f0_crepe_on_a_tone():
    sr = 16000
    lb = load_labeller("f0?method=crepe&model=tiny&device=cpu")
    audio = tone(220.0, 0.4, sr)
    times = frame_times(30, 75)
    out = lb.frame_labels(Utterance("c", "x"), audio, sr, times, 75)
    v = out["voiced"]
    assert v.mean() >= 0.8
    assert np.all(np.abs(out["f0_hz"][v] / 220 - 1) < 0.01)
    assert np.all(np.isnan(out["f0_hz"][~v]))
    silent = lb.frame_labels(Utterance("s", "x"), np.zeros(4000, np.float32), sr, frame_times(18, 75), 75)
    assert not silent["voiced"].any()


# ---------------------------------------------------------------------------- loudness


def test_loudness_known_levels_and_spans():
    sr = 16000
    lb = load_labeller("loudness")
    full = tone(1000.0, 1.0, sr, amp=1.0)
    out = lb.frame_labels(Utterance("a", "x"), full, sr, frame_times(50, 50), 50)["loudness"]
    np.testing.assert_allclose(out, -3.0103, atol=0.01)
    tenth = lb.frame_labels(Utterance("b", "x"), full * 0.1, sr, frame_times(50, 50), 50)["loudness"]
    np.testing.assert_allclose(tenth, -23.0103, atol=0.01)
    # A step exactly on a frame edge at 50 Hz: 6 frames of silence, then a constant 0.5.
    step = np.concatenate([np.zeros(6 * 320), np.full(4 * 320, 0.5)]).astype(np.float32)
    got = lb.frame_labels(Utterance("c", "x"), step, sr, frame_times(11, 50), 50)["loudness"]
    np.testing.assert_allclose(got[:6], -100.0)
    np.testing.assert_allclose(got[6:10], 20 * np.log10(0.5), atol=1e-6)
    assert np.isnan(got[10])  # past the end of the audio
    # 12.5 Hz span of 1280 samples: the mean power over the span, by time.
    slow = lb.frame_labels(Utterance("d", "x"), step, sr, frame_times(3, 12.5), 12.5)["loudness"]
    np.testing.assert_allclose(slow[1], 10 * np.log10((0.25 * (2560 - 1920)) / 1280), atol=1e-6)
    assert lb.utterance_labels(Utterance("a", "x"), full, sr)["loudness_db"] == pytest.approx(-3.0103, abs=0.01)


# ---------------------------------------------------------------------------- units


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    import torch

    from codeclens.labels.units import _transformers_class

    cfg = _transformers_class("HubertConfig")(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("hubert")
    _transformers_class("HubertModel")(cfg).save_pretrained(d)
    return d


def test_units_from_tiny_hubert(tiny_hubert, audio_folder, tmp_path):
    from codeclens.corpora import load_corpus

    utts = [u for u in load_corpus(str(audio_folder)) if "broken" not in u.path]
    spec = f"units?checkpoint={tiny_hubert}&layer=2&k=8&seed=3"
    a = load_labeller(spec + f"&path={tmp_path / 'km.npz'}")
    a.fit(utts)
    assert (tmp_path / "km.npz").is_file()
    b = load_labeller(spec)
    b.fit(utts)
    audio, sr = utts[0].load(24000)
    for fr in (75.0, 12.5):
        times = frame_times(int(np.ceil(len(audio) / sr * fr)), fr)
        ua = a.frame_labels(utts[0], audio, sr, times, fr)["unit"]
        ub = b.frame_labels(utts[0], audio, sr, times, fr)["unit"]
        assert ua.dtype == np.int64 and len(ua) == len(times)
        assert ua.min() >= 0 and ua.max() < 8
        np.testing.assert_array_equal(ua, ub)  # same seed, same units
    assert len(set(ua.tolist())) > 1
    # A third labeller re-uses the saved k-means without fitting.
    c = load_labeller(spec + f"&path={tmp_path / 'km.npz'}")
    times = frame_times(20, 50)
    np.testing.assert_array_equal(c.frame_labels(utts[0], audio, sr, times, 50)["unit"],
                                  a.frame_labels(utts[0], audio, sr, times, 50)["unit"])
    with pytest.raises(CodeclensError, match="holds k=8"):
        load_labeller(f"units?checkpoint={tiny_hubert}&layer=2&k=9&path={tmp_path / 'km.npz'}").fit(utts)


def test_units_fall_back_to_phones():
    lb = load_labeller("units")
    utt = Utterance("u", "x.wav", phones=(Interval(0.0, 0.1, "sil"), Interval(0.1, 0.2, "AA1")))
    out = lb.frame_labels(utt, np.zeros(4000, np.float32), 16000, frame_times(12, 50), 50)["unit"]
    assert list(out[:5]) == [phone_index("sil")] * 5 and list(out[5:10]) == [phone_index("ɑ")] * 5
    assert list(out[10:]) == [-1, -1]


def test_labellers_are_registered():
    assert {"phone", "f0", "loudness", "units"} <= set(LABELLERS.names())


# ---------------------------------------------------------------------------- end to end


def test_extract_over_manifest_has_frame_labels(tmp_path, melrvq_dir):
    """A tone, then noise, then silence, aligned as AA1 / S / sil; plus one bad row."""
    from codeclens.cli import main
    from codeclens.store import Store

    sr = 16000
    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    root.mkdir()
    rows = []
    for i, f in enumerate((150.0, 200.0, 260.0)):
        audio = np.concatenate([tone(f, 0.6, sr), (0.1 * rng.standard_normal(int(0.3 * sr))).astype(np.float32),
                                np.zeros(int(0.3 * sr), np.float32)])
        sf.write(root / f"u{i}.wav", audio, sr)
        write_textgrid(root / f"u{i}.TextGrid", {"phones": [Interval(0.0, 0.6, "AA1"), Interval(0.6, 0.9, "S"),
                                                            Interval(0.9, 1.2, "")]}, 1.2)
        rows.append({"path": f"u{i}.wav", "speaker": f"s{i % 2}", "accent": "us", "textgrid": f"u{i}.TextGrid",
                     "age": 30 + i})
    rows.append({"path": "missing.wav", "speaker": "s0", "accent": "us", "textgrid": "", "age": 1})
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "store"
    rc = main(["extract", "--corpus", f"manifest:{root / 'manifest.csv'}", "--codec",
               f"melrvq?checkpoint={melrvq_dir}", "--out", str(out), "--quiet"])
    assert rc == 0
    st = Store(out)
    fr = st.frames
    for col in ("phone", "phone_class", "f0_hz", "f0_cents", "voiced", "loudness"):
        assert col in fr.columns, col
    v = fr["voiced"].to_numpy().astype(bool)
    f0 = fr["f0_hz"].to_numpy(dtype=float)
    assert np.all(np.isfinite(f0[v])) and np.all(np.isnan(f0[~v]))
    t = fr["time"].to_numpy()
    tone_frames = t < 0.55
    noise_frames = (t > 0.65) & (t < 0.85)
    assert v[tone_frames].mean() > 0.95 and v[noise_frames].mean() < 0.05
    assert set(fr["phone"][tone_frames]) == {"ɑ"} and set(fr["phone"][noise_frames]) == {"s"}
    assert set(fr["phone"][t > 0.95]) == {"sil"}
    utt_f = st.utterances.set_index(np.arange(len(st.utterances)))
    expect = fr["utt"].map(lambda j: {"u0": 150.0, "u1": 200.0, "u2": 260.0}[utt_f["id"][j]]).to_numpy()
    assert np.all(np.abs(f0[tone_frames] / expect[tone_frames] - 1) < 0.01)
    loud = fr["loudness"].to_numpy()
    assert np.all(loud[t > 0.95] < -90) and np.all(np.abs(loud[tone_frames] - 20 * np.log10(0.3 / np.sqrt(2))) < 0.5)
    assert sorted(st.utterances["age"].tolist()) == [30, 31, 32]
    skipped = st.manifest["skipped"]
    assert any("missing.wav" in json_text and "row 4" in json_text for json_text in map(str, skipped))

    # `codeclens label` adds columns to the finished store, on the store's own frame times.
    assert main(["label", "--store", str(out), "--labels", "units,loudness?floor_db=-80", "--quiet"]) == 0
    st2 = Store(out)
    fr2 = st2.frames
    np.testing.assert_array_equal(fr2["unit"].to_numpy(), [phone_index(p) for p in fr2["phone"]])
    assert np.all(fr2["loudness"].to_numpy()[t > 0.95] == -80.0)
    np.testing.assert_allclose(fr2["loudness"].to_numpy()[tone_frames], loud[tone_frames])
    assert len(fr2) == len(fr) and st2.manifest["config_hash"] == st.manifest["config_hash"]
    assert [d["spec"] for d in st2.manifest["added_labels"]] == ["units", "loudness?floor_db=-80"]
    assert main(["label", "--store", str(out), "--labels", "nope", "--quiet"]) == 2
