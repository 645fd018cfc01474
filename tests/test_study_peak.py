"""benchmarks/study_peak.py: its LibriSpeech-layout corpus reads back through the real reader
with alignments, and its study copy swaps released checkpoints for random weights."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from study_peak import random_study, write_librispeech_layout  # noqa: E402

from codeclens.corpora import load_corpus  # noqa: E402
from codeclens.study import load_study  # noqa: E402


def test_librispeech_layout_corpus_and_random_study_copy(tmp_path):
    subset = write_librispeech_layout(tmp_path / "data", n=5, speakers=2, progress=False, short=(1.0, 2.0))
    align = tmp_path / "data" / "alignments" / "train-clean-100"
    spec = f"librispeech:{subset}?alignments={align}"
    corpus = load_corpus(spec)
    utts = list(corpus)
    assert len(utts) == 5 and not corpus.problems
    assert len({u.speaker for u in utts}) == 2
    for u in utts:
        info = sf.info(u.path)
        assert info.samplerate == 16000
        assert u.phones and abs(u.phones[-1].end - info.duration) < 0.1  # the alignment covers the audio
        assert dict(u.extra)["gender"] in ("female", "male")
    assert (subset / utts[0].speaker).is_dir() and list(subset.rglob("*.trans.txt"))

    copy, subs = random_study(ROOT / "studies" / "librispeech_probing.toml", spec, tmp_path / "study",
                              ["analyses.ablate.n_utts=2"])
    data = tomllib.loads(copy.read_text())
    assert all("random_init=1" in c["spec"] and c["save_random"] for c in data["codecs"].values())
    assert data["codecs"]["speechtokenizer"]["spec"] == "speechtokenizer?random_init=1&seed=1"
    assert data["corpora"]["train100"]["spec"] == spec
    assert data["analyses"]["ablate"]["n_utts"] == 2
    assert len(subs) == 3
    load_study(copy)  # valid: every path it names exists (the published table was copied beside it)
