"""ablate: the audio measures, on signals with known answers and on two real (eSpeak NG) voices."""

import numpy as np
import pytest

from codeclens.analyses.ablate import measures as ms
from codeclens.codecs.calibration import calibration_audio
from codeclens.errors import CodeclensError

SR = 16000


# Small models on a shared 2-core machine run far faster without intra-op threads.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def harmonic(f0: float, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 8))).astype(np.float32)


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """Two eSpeak NG speakers (a male and a female voice variant, different pitch and rate),
    two different sentences each, from the project's synthetic corpus."""
    from codeclens.corpora import load_corpus

    out = tmp_path_factory.mktemp("syn")
    c = load_corpus(f"synthetic:{out}?n=4&accents=en-us&speakers_per_accent=2&seed=0&progress=0")
    by = {}
    for u in c:
        by.setdefault(u.speaker, []).append(u.load(SR)[0])
    assert len(by) == 2 and all(len(v) == 2 for v in by.values())
    return list(by.values())


def test_identical_audio_scores_as_identical():
    a = calibration_audio(SR, 1.5, seed=3)
    enc = ms.speaker_encoder("cpu")
    assert ms.speaker_similarity(enc, a, a, SR) == pytest.approx(1.0, abs=1e-5)
    assert ms.stoi(a, a, SR) == pytest.approx(1.0, abs=1e-6)
    assert ms.mel_cepstral_distance(a, a, SR) == 0.0
    assert ms.loudness_change_db(a, a) == 0.0
    tr = ms.f0_track(a, SR)
    assert tr.voiced.any()
    assert ms.f0_rmse_cents(tr, tr) == 0.0 and ms.voicing_agreement(tr, tr) == 1.0


def test_known_changes():
    a = harmonic(150.0)
    up = harmonic(150.0 * 2 ** (100 / 1200))  # one semitone higher
    assert ms.f0_rmse_cents(ms.f0_track(a, SR), ms.f0_track(up, SR)) == pytest.approx(100.0, abs=15.0)
    c = calibration_audio(SR, 1.5, seed=4)
    # A gain only moves c0, which MCD leaves out; loudness sees exactly 20*log10(0.5).
    assert ms.mel_cepstral_distance(c, 0.5 * c, SR) == pytest.approx(0.0, abs=1e-3)
    assert ms.loudness_change_db(c, 0.5 * c) == pytest.approx(-6.0206, abs=1e-3)
    noisy = c + 0.3 * np.random.default_rng(0).standard_normal(len(c)).astype(np.float32)
    assert ms.stoi(c, noisy, SR) < 0.9
    assert ms.mel_cepstral_distance(c, noisy, SR) > 1.0
    # Silence is unvoiced: no frame is voiced in both, so no F0 error, and voicing disagrees where c is voiced.
    silent = ms.f0_track(np.zeros_like(c), SR)
    assert np.isnan(ms.f0_rmse_cents(ms.f0_track(c, SR), silent))


def test_f0_error_counts_only_frames_voiced_in_both():
    """Known answer on tracks built by hand: frames voiced in only one signal (here with a
    2-octave error) must not enter the RMSE; they only lower the voicing agreement."""
    n = 40
    ref = ms.F0Track(np.full(n, 100.0), np.ones(n, dtype=bool))
    f0 = np.full(n, 100.0 * 2 ** (100 / 1200))  # one semitone up where both are voiced
    voiced = np.ones(n, dtype=bool)
    f0[:10], voiced[:10] = np.nan, False  # unvoiced in hyp
    f0[10:20] = 400.0
    hyp_only = ms.F0Track(f0, voiced)
    ref_part = ms.F0Track(np.where(np.arange(n) < 20, 25.0, 100.0), np.arange(n) >= 10)
    assert ms.f0_rmse_cents(ref, hyp_only) == pytest.approx(np.sqrt((10 * 2400.0 ** 2 + 20 * 100.0 ** 2) / 30))
    assert ms.voicing_agreement(ref, hyp_only) == pytest.approx(30 / 40)
    # Frames 10..19 are voiced in both (25 Hz -> 400 Hz: 4800 cents); 0..9 are voiced in neither.
    assert ms.f0_rmse_cents(ref_part, hyp_only) == pytest.approx(np.sqrt((10 * 4800.0 ** 2 + 20 * 100.0 ** 2) / 30))
    assert ms.voicing_agreement(ref_part, hyp_only) == 1.0
    # Different lengths: compared over the common prefix.
    assert ms.f0_rmse_cents(ref, ms.F0Track(f0[20:], voiced[20:])) == pytest.approx(100.0)


def test_stoi_is_given_the_rate_of_the_signal():
    """pystoi resamples to its internal 10 kHz from the rate it is told: the same signals given
    at 24 kHz and at 16 kHz must score as pystoi scores them resampled to 10 kHz directly."""
    from pystoi import stoi as reference_stoi

    from codeclens.audio import resample

    c = calibration_audio(24000, 2.0, seed=5)
    noisy = c + 0.05 * np.random.default_rng(1).standard_normal(len(c)).astype(np.float32)
    want = reference_stoi(resample(c, 24000, 10000).astype(np.float64), resample(noisy, 24000, 10000).astype(np.float64), 10000)
    assert 0.3 < want < 0.99
    assert ms.stoi(c, noisy, 24000) == pytest.approx(want, abs=0.01)
    assert ms.stoi(resample(c, 24000, 16000), resample(noisy, 24000, 16000), 16000) == pytest.approx(want, abs=0.01)
    # Told the wrong rate, the score moves: the rate matters and is not ignored.
    assert abs(ms.stoi(c, noisy, 16000) - want) > 0.01


def test_mcd_matches_a_reference_mfcc():
    """Reference implementation: librosa's MFCC (orthonormal DCT-II of the dB mel amplitude), taken
    to natural-log units (x ln10/20) and to the documented FFT-cepstrum scale (/ sqrt(2 * n_mels)),
    gives the same coefficients 1..24 and the same MCD = mean 10/ln10 * sqrt(2 * sum d^2)."""
    import librosa

    rng = np.random.default_rng(0)
    a = calibration_audio(SR, 1.5, seed=4) + 0.01 * rng.standard_normal(int(1.5 * SR)).astype(np.float32)
    b = a + 0.2 * rng.standard_normal(len(a)).astype(np.float32)

    def cepstrum(x):
        mel = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=1024, hop_length=160, n_mels=80, power=1.0)
        db = librosa.amplitude_to_db(mel, ref=1.0, amin=1e-30, top_db=None)
        m = librosa.feature.mfcc(S=db, n_mfcc=25, dct_type=2, norm="ortho")
        return (m[1:25] * np.log(10) / 20 / np.sqrt(2 * 80)).T

    ca, cb = cepstrum(a), cepstrum(b)
    np.testing.assert_allclose(ms.mel_cepstrum(a, SR), ca, atol=1e-5)
    want = np.mean(10 / np.log(10) * np.sqrt(2 * np.sum((ca - cb) ** 2, axis=1)))
    assert ms.mel_cepstral_distance(a, b, SR) == pytest.approx(want, rel=1e-4)


def test_a_different_voice_is_less_similar_than_the_same_voice(voices):
    """Two eSpeak NG speakers that differ in gender variant, pitch and rate: what this shows is that
    the Resemblyzer similarity separates clearly different voices across different sentences, not
    that it resolves close natural voices."""
    (a1, a2), (b1, b2) = voices
    enc = ms.speaker_encoder("cpu")
    e = {k: enc.embed(x, SR) for k, x in {"a1": a1, "a2": a2, "b1": b1, "b2": b2}.items()}
    same = [ms.cosine(e["a1"], e["a2"]), ms.cosine(e["b1"], e["b2"])]
    diff = [ms.cosine(e["a1"], e["b1"]), ms.cosine(e["a1"], e["b2"]), ms.cosine(e["a2"], e["b1"]), ms.cosine(e["a2"], e["b2"])]
    assert min(same) > max(diff), (same, diff)


def test_word_error_rate():
    assert ms.word_error_rate("the cat sat", "the cat sat") == 0.0
    assert ms.word_error_rate("the cat sat", "a cat sat down") == pytest.approx(2 / 3)
    assert ms.word_error_rate("The Cat", "the cat") == 0.0


def test_missing_asr_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CodeclensError, match="not found"):
        ms.AsrScorer(str(tmp_path / "no-such-model"))
    with pytest.raises(CodeclensError, match="cannot load ASR checkpoint"):
        ms.AsrScorer(str(tmp_path))
