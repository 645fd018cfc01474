"""Manifest and LibriSpeech corpora: real files in temporary trees, good and bad rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from codeclens.corpora import load_corpus
from codeclens.corpora.base import Interval
from codeclens.corpora.textgrid import write_textgrid
from codeclens.errors import CodeclensError
from codeclens.labels import frame_times, load_labeller

SR = 16000


def wav(path, seconds, sr=SR, fmt=None):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr, format=fmt)
    return path


def bad_textgrid_overlap(path):
    path.write_text(
        'File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\nxmax = 1\ntiers? <exists>\nsize = 1\n'
        'item []:\n    item [1]:\n        class = "IntervalTier"\n        name = "phones"\n        xmin = 0\n'
        '        xmax = 1\n        intervals: size = 2\n        intervals [1]:\n            xmin = 0\n'
        '            xmax = 0.6\n            text = "AA1"\n        intervals [2]:\n            xmin = 0.4\n'
        '            xmax = 1\n            text = "B"\n'
    )
    return path


@pytest.fixture()
def manifest_tree(tmp_path):
    root = tmp_path / "data"
    (root / "audio").mkdir(parents=True)
    wav(root / "audio" / "a.wav", 1.0)
    wav(root / "audio" / "b.wav", 1.0)
    wav(root / "audio" / "long.wav", 3.0)
    (root / "audio" / "junk.wav").write_text("not audio")
    write_textgrid(root / "a.TextGrid", {"phones": [Interval(0, 0.3, ""), Interval(0.3, 0.7, "ˈɑː"),
                                                    Interval(0.7, 1.0, "s")], "words": [Interval(0, 1, "ah")]}, 1.0)
    write_textgrid(root / "long.TextGrid", {"phones": [Interval(0, 1.0, "AA1"), Interval(1.0, 2.0, "S"),
                                                       Interval(2.0, 3.0, "sil")]}, 3.0)
    write_textgrid(root / "toolong.TextGrid", {"phones": [Interval(0, 2.5, "AA1")]}, 2.5)
    write_textgrid(root / "short.TextGrid", {"phones": [Interval(0, 0.4, "AA1")]}, 0.4)
    write_textgrid(root / "notier.TextGrid", {"words": [Interval(0, 0.5, "a")], "syllables": [Interval(0, 1, "a")]}, 1.0)
    bad_textgrid_overlap(root / "overlap.TextGrid")
    (root / "garbage.TextGrid").write_text("this is not a TextGrid")
    rows = [
        # path, speaker, accent, textgrid, start, end, gender, age, score
        ("audio/a.wav", "s1", "us", "a.TextGrid", "", "", "f", "31", "0.5"),           # row 1 good
        ("audio/b.wav", "s2", "gb", "", "", "", "m", "42", "1.5"),                    # row 2 good, no alignment
        ("audio/missing.wav", "s1", "us", "", "", "", "f", "1", "1"),                 # row 3 missing file
        ("audio/b.wav", "", "us", "", "", "", "f", "1", "1"),                         # row 4 missing speaker
        ("audio/b.wav", "s3", "us", "overlap.TextGrid", "", "", "m", "1", "1"),       # row 5 overlapping intervals
        ("audio/b.wav", "s3", "us", "toolong.TextGrid", "", "", "m", "1", "1"),       # row 6 past the audio end
        ("audio/b.wav", "s3", "us", "short.TextGrid", "", "", "m", "1", "1"),         # row 7 does not reach the end
        ("audio/b.wav", "s3", "us", "garbage.TextGrid", "", "", "m", "1", "1"),       # row 8 malformed
        ("audio/b.wav", "s3", "us", "notier.TextGrid", "", "", "m", "1", "1"),        # row 9 no phone tier
        ("audio/junk.wav", "s3", "us", "", "", "", "m", "1", "1"),                    # row 10 unreadable audio
        ("audio/long.wav", "s4", "in", "long.TextGrid", "0.5", "1.5", "f", "50", ""),  # row 11 good segment
        ("audio/long.wav", "s4", "in", "", "2.0", "1.0", "f", "50", "2"),              # row 12 end before start
        ("audio/long.wav", "s4", "in", "", "1.0", "9.0", "f", "50", "2"),              # row 13 end past the file
        ("audio/b.wav", "s2", "gb", "", "", "", "m", "42", "1.5"),                     # row 14 duplicate of row 2
    ]
    header = "path,speaker,accent,textgrid,start,end,gender,age,score\n"
    (root / "m.csv").write_text(header + "\n".join(",".join(r) for r in rows) + "\n")
    return root


def test_manifest_loads_good_rows_and_records_bad_ones(manifest_tree):
    corpus = load_corpus(f"manifest:{manifest_tree / 'm.csv'}")
    utts = list(corpus)
    assert [u.id for u in utts] == ["audio/a", "audio/b", "audio/long@0.500-1.500"]
    a, b, seg = utts
    assert a.speaker == "s1" and a.accent == "us" and a.path == str(manifest_tree / "audio" / "a.wav")
    assert [iv.label for iv in a.phones] == ["", "ˈɑː", "s"]
    assert b.phones is None
    extra = dict(a.extra)
    assert extra == {"gender": "f", "age": 31, "score": 0.5}  # numbers stay numbers
    assert dict(seg.extra)["score"] is None
    # The segment takes the TextGrid's intervals inside [0.5, 1.5], shifted to start at 0.
    assert seg.start == 0.5 and seg.end == 1.5
    assert [(iv.start, iv.end, iv.label) for iv in seg.phones] == [(0.0, 0.5, "AA1"), (0.5, 1.0, "S")]
    audio, sr = seg.load(SR)
    assert len(audio) == SR

    problems = {p.where.rsplit(":", 1)[1]: p.message for p in corpus.problems}
    assert sorted(problems, key=lambda w: int(w.split()[1])) == [f"row {i}" for i in (3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14)]
    for where, msg in problems.items():
        assert str(manifest_tree / "m.csv") in msg and f"{where} (line" in msg
    assert "audio file not found" in problems["row 3"]
    assert "missing speaker" in problems["row 4"]
    assert "overlaps the previous one" in problems["row 5"]
    assert "alignment ends at 2.500 s but the audio lasts 1.000 s" in problems["row 6"]
    assert "alignment ends at 0.400 s but the audio lasts 1.000 s" in problems["row 7"]
    assert "malformed TextGrid" in problems["row 8"]
    assert "no tier 'phones'" in problems["row 9"]
    assert "unreadable audio" in problems["row 10"]
    assert "not after start" in problems["row 12"]
    assert "past the end" in problems["row 13"]
    assert "duplicate utterance id" in problems["row 14"]
    # Iterating again gives the same utterances and does not duplicate problems.
    assert len(list(corpus)) == 3 and len(corpus.problems) == 11


def test_manifest_phone_labels_of_a_segment(manifest_tree):
    corpus = load_corpus(f"manifest:{manifest_tree / 'm.csv'}")
    seg = list(corpus)[2]
    audio, sr = seg.load(SR)
    out = load_labeller("phone").frame_labels(seg, audio, sr, frame_times(50, 50), 50)
    assert list(out["phone"]) == ["ɑ"] * 25 + ["s"] * 25


def test_manifest_jsonl_require_and_errors(tmp_path):
    wav(tmp_path / "x.wav", 0.5)
    lines = [
        {"path": "x.wav", "speaker": 7, "accent": "scottish", "id": "utt-1", "meta": {"k": 1}, "rating": 3.5},
        {"path": "x.wav", "speaker": "8", "id": "utt-2"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    corpus = load_corpus(f"manifest:{tmp_path / 'm.jsonl'}")
    utts = list(corpus)
    assert [u.id for u in utts] == ["utt-1", "utt-2"] and utts[0].speaker == "7"
    assert dict(utts[0].extra) == {"meta": '{"k": 1}', "rating": 3.5}
    assert dict(utts[1].extra) == {"meta": None, "rating": None}
    strict = load_corpus(f"manifest:{tmp_path / 'm.jsonl'}?require=accent")
    assert [u.id for u in strict] == ["utt-1"]
    assert "row 2 (line 2): missing accent" in strict.problems[0].message
    assert "row 3 (line 3): not valid JSON" in corpus.problems[0].message and len(corpus.problems) == 1

    (tmp_path / "nospk.csv").write_text("path,accent\nx.wav,us\n")
    with pytest.raises(CodeclensError, match="no 'speaker' column"):
        list(load_corpus(f"manifest:{tmp_path / 'nospk.csv'}"))
    (tmp_path / "clash.csv").write_text("path,speaker,duration\nx.wav,a,1\n")
    with pytest.raises(CodeclensError, match="duration"):
        list(load_corpus(f"manifest:{tmp_path / 'clash.csv'}"))
    with pytest.raises(CodeclensError, match="manifest not found"):
        load_corpus(f"manifest:{tmp_path / 'nope.csv'}")
    with pytest.raises(CodeclensError, match="unknown option"):
        load_corpus(f"manifest:{tmp_path / 'm.jsonl'}?colour=red")


# ---------------------------------------------------------------------------- LibriSpeech

SPEAKERS_TXT = """\
; Some comments
;ID  |SEX| SUBSET           |MINUTES| NAME
19   | F | train-clean-100  | 25.19 | Kara Shallenberg
84   | M | dev-clean        |  8.02 | Christie Nowak
"""


@pytest.fixture()
def libri(tmp_path):
    """Two speakers, two chapters; alignments as MFA TextGrids and as plain text."""
    root = tmp_path / "LibriSpeech"
    sub = root / "dev-clean"
    durs = {"19-198-0000": 1.0, "19-198-0001": 0.8, "84-121123-0000": 1.2, "84-121123-0001": 0.6}
    for uid, d in durs.items():
        spk, ch, _ = uid.split("-")
        (sub / spk / ch).mkdir(parents=True, exist_ok=True)
        wav(sub / spk / ch / f"{uid}.flac", d, fmt="FLAC")
    (sub / "84" / "121123" / "84-121123.trans.txt").write_text("84-121123-0000 HELLO\n84-121123-0001 A\n")
    (sub / "84" / "121123" / "notes.flac").write_bytes(b"")  # not an utterance name
    (root / "SPEAKERS.TXT").write_text(SPEAKERS_TXT)

    grids = tmp_path / "mfa"
    for uid in ("19-198-0000", "84-121123-0000"):
        spk, ch, _ = uid.split("-")
        d = durs[uid]
        (grids / spk / ch).mkdir(parents=True, exist_ok=True)
        write_textgrid(grids / spk / ch / f"{uid}.TextGrid",
                       {"words": [Interval(0, d, "x")], "phones": [Interval(0, 0.2, "sil"), Interval(0.2, d, "AH0")]}, d)
    # 19-198-0001 has a TextGrid longer than its audio; 84-121123-0001 has none.
    (grids / "19" / "198" / "19-198-0001.TextGrid").parent.mkdir(parents=True, exist_ok=True)
    write_textgrid(grids / "19" / "198" / "19-198-0001.TextGrid", {"phones": [Interval(0, 3.0, "AH0")]}, 3.0)

    plain = tmp_path / "plain" / "dev-clean" / "84" / "121123"
    plain.mkdir(parents=True)
    (plain / "84-121123.alignment.txt").write_text(
        '84-121123-0000 ",HH,AH0,L,OW1," "0.200,0.300,0.500,0.600,1.000,1.200"\n'
        '84-121123-0001 ",AH0" "0.050,0.100"\n'
        '84-121123-0009 "A,B" "0.100"\n'
    )
    other = tmp_path / "plain" / "dev-clean" / "19" / "198"
    other.mkdir(parents=True)
    (other / "19-198.alignment.txt").write_text(
        '19-198-0000 ",AA1," "0.300,0.700,1.000"\n'
        "19-198-0001 this line is broken\n"
    )
    return sub, grids, tmp_path / "plain"


def test_librispeech_with_mfa_textgrids(libri):
    sub, grids, _ = libri
    corpus = load_corpus(f"librispeech:{sub}?alignments={grids}")
    utts = {u.id: u for u in corpus}
    assert sorted(utts) == ["19-198-0000", "84-121123-0000"]
    u = utts["84-121123-0000"]
    assert u.speaker == "84" and dict(u.extra) == {"chapter": "121123", "gender": "male", "subset": "dev-clean"}
    assert dict(utts["19-198-0000"].extra)["gender"] == "female"
    assert [iv.label for iv in u.phones] == ["sil", "AH0"]
    msgs = " | ".join(p.message for p in corpus.problems)
    assert "notes.flac: not named SPEAKER-CHAPTER-NNNN.flac" in msgs
    assert "19-198-0001" in msgs and "alignment ends at 3.000 s but the audio lasts 0.800 s" in msgs
    assert "no alignment for 84-121123-0001" in msgs
    assert len(corpus.problems) == 3


def test_librispeech_with_plain_text_alignments(libri):
    sub, _, plain = libri
    corpus = load_corpus(f"librispeech:{sub}?alignments={plain}")
    utts = {u.id: u for u in corpus}
    assert sorted(utts) == ["19-198-0000", "84-121123-0000"]
    ph = utts["84-121123-0000"].phones
    assert [(iv.start, iv.end, iv.label) for iv in ph] == [
        (0.0, 0.2, ""), (0.2, 0.3, "HH"), (0.3, 0.5, "AH0"), (0.5, 0.6, "L"), (0.6, 1.0, "OW1"), (1.0, 1.2, "")
    ]
    audio, sr = utts["84-121123-0000"].load(SR)
    got = load_labeller("phone").frame_labels(utts["84-121123-0000"], audio, sr, frame_times(12, 10), 10)["phone"]
    assert list(got) == ["sil", "sil", "h", "ə", "ə", "l", "oʊ", "oʊ", "oʊ", "oʊ", "sil", "sil"]
    msgs = " | ".join(p.message for p in corpus.problems)
    assert "19-198.alignment.txt, line 2" in msgs  # malformed line
    assert "84-121123.alignment.txt, line 3: 2 phones but 1 end times" in msgs
    assert "84-121123-0001" in msgs and "alignment ends at 0.100 s but the audio lasts 0.600 s" in msgs


def test_librispeech_without_alignments_and_bad_paths(libri, tmp_path):
    sub, _, _ = libri
    corpus = load_corpus(f"librispeech:{sub}")
    assert len(corpus) == 4 and all(u.phones is None for u in corpus)
    with pytest.raises(CodeclensError, match="folder not found"):
        load_corpus(f"librispeech:{tmp_path / 'nope'}")
    with pytest.raises(CodeclensError, match="alignments not found"):
        load_corpus(f"librispeech:{sub}?alignments={tmp_path / 'nope'}")
    with pytest.raises(CodeclensError, match="tolerance must be"):
        load_corpus(f"librispeech:{sub}?tolerance=-1")


def test_librispeech_follows_a_symlinked_subset(libri, tmp_path):
    """A subset linked into the tree (a common way to share LibriSpeech) is read, not skipped."""
    sub, _, _ = libri
    tree = tmp_path / "linked" / "LibriSpeech"
    tree.mkdir(parents=True)
    (tree / "dev-clean").symlink_to(sub, target_is_directory=True)
    (tree / "dev-clean-loop").symlink_to(tree, target_is_directory=True)
    corpus = load_corpus(f"librispeech:{tree}")
    assert sorted(u.id for u in corpus) == ["19-198-0000", "19-198-0001", "84-121123-0000", "84-121123-0001"]
    assert any("symlink loop" in p.message for p in corpus.problems)


SHORT_TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

0
2.3
<exists>
2
"TextTier"
"bells"
0
2.3
1
1.0
"ding"
"IntervalTier"
"phones"
0
2.3
2
0
1.5
"a"
1.5
2.3
"say ""hi"""
'''


def test_textgrid_short_format_point_tiers_and_quotes(tmp_path):
    """Praat's short text format reads to the same intervals; point tiers are skipped;
    doubled quotes inside labels survive a write/read round trip."""
    from codeclens.corpora.textgrid import TextGridError, read_textgrid

    p = tmp_path / "short.TextGrid"
    p.write_text(SHORT_TEXTGRID, encoding="utf-8")
    want = [Interval(0.0, 1.5, "a"), Interval(1.5, 2.3, 'say "hi"')]
    assert read_textgrid(p) == {"phones": want}
    back = tmp_path / "long.TextGrid"
    write_textgrid(back, {"phones": [Interval(0.2, 1.5, "a"), Interval(1.5, 2.3, 'say "hi"')]}, 2.5)
    # Gaps are filled with empty intervals, on both sides.
    assert read_textgrid(back) == {"phones": [Interval(0.0, 0.2, ""), Interval(0.2, 1.5, "a"),
                                              Interval(1.5, 2.3, 'say "hi"'), Interval(2.3, 2.5, "")]}
    p.write_text(SHORT_TEXTGRID[: SHORT_TEXTGRID.index('"say')], encoding="utf-8")
    with pytest.raises(TextGridError, match="truncated TextGrid"):
        read_textgrid(p)


def test_load_audio_segments_known_samples(tmp_path):
    """A segment is exactly the samples [start*sr, end*sr); bad bounds are one-line AudioErrors."""
    from codeclens.audio import AudioError, load_audio

    x = (np.arange(1600) / 1600).astype(np.float32)
    p = tmp_path / "ramp.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    a, sr = load_audio(str(p), None, 0.05, 0.08)
    assert sr == 16000
    np.testing.assert_array_equal(a, x[800:1280])
    np.testing.assert_array_equal(load_audio(str(p), None, 0.09)[0], x[1440:])
    for start, end, msg in ((-0.01, 0.05, "before 0"), (0.2, 0.3, "past the end"), (0.05, 0.05, "empty segment")):
        with pytest.raises(AudioError, match=msg):
            load_audio(str(p), None, start, end)
    with pytest.raises(AudioError, match="unreadable audio"):
        load_audio(str(tmp_path / "missing.wav"))
