"""Benchmark: peak RSS of every step of a real-data study, offline.

Builds a LibriSpeech-layout corpus from eSpeak NG speech (``SPEAKER/CHAPTER/
SPEAKER-CHAPTER-NNNN.flac`` at 16 kHz, ``*.trans.txt``, ``SPEAKERS.TXT``, and
MFA-style ``phones`` TextGrids in the same layout under ``alignments/``): each
utterance is several eSpeak sentences of one speaker joined to a LibriSpeech-like
length (targets mostly 2-14 s, a tenth 20-24.5 s, train-clean-100's longest; joined
sentences overshoot a target by up to one sentence), so the
read path is the real ``librispeech:`` reader with alignments.

Then it copies the study file with every released checkpoint replaced by the
same full-size architecture with random weights (``random_init=1``, saved once by
the study's ``save_random`` step and reloaded through the real loader), points its
corpus at the built one, runs it with ``codeclens run`` in a fresh process under
``/usr/bin/time -v``, and prints each step's peak resident set as the run records
it (``RUN/.steps/*.json``: the high-water mark reset before each step, see
``codeclens.study.rss``) beside the whole process' maximum.

    python benchmarks/study_peak.py                                   # 120 utterances, the probing study
    python benchmarks/study_peak.py --n 12 --study studies/librispeech_probing.toml --out /tmp/peak
    python benchmarks/study_peak.py --set analyses.ablate.n_utts=10   # override a study option (say so)

Exit status 1 when a step is above ``--limit`` GB (default 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SR = 16000
#: Each spec kind's released checkpoint -> the same architecture with random weights.
#: (Seed 1: a study's own random-weight control keeps seed 0, so the two stay different models.)
RANDOM_SPECS = {
    "encodec": lambda spec: _with_random(spec.split("?")[0]),
    "speechtokenizer": lambda spec: _with_random("speechtokenizer"),
    "dac": lambda spec: _with_random(spec.split("?")[0]),
    "mimi": lambda spec: _with_random("mimi"),
}


def _with_random(base: str) -> str:
    return f"{base}?random_init=1&seed=1"


def durations(n: int, seed: int, short: tuple[float, float] = (2.0, 14.0)) -> list[float]:
    """LibriSpeech-like target lengths: 90 % in ``short``, 10 % in 20-24.5 s (train-clean-100's longest)."""
    import numpy as np

    rng = np.random.default_rng([seed, 7])
    long = rng.random(n) < 0.1
    return [float(rng.uniform(20.0, 24.5) if lg else rng.uniform(*short)) for lg in long]


def write_librispeech_layout(root: Path, n: int = 120, speakers: int = 12, seed: int = 0, progress: bool = True,
                             short: tuple[float, float] = (2.0, 14.0)) -> Path:
    """A LibriSpeech-layout corpus of ``n`` utterances by ``speakers`` eSpeak speakers in ``root``.

    Returns the subset folder (``root/LibriSpeech/train-clean-100``); alignments are in
    ``root/alignments/train-clean-100``. Deterministic for (n, speakers, seed); written once.
    """
    import numpy as np
    import soundfile as sf
    from scipy.signal import resample_poly

    from codeclens.corpora import load_corpus
    from codeclens.corpora.base import Interval
    from codeclens.corpora.textgrid import write_textgrid

    subset = root / "LibriSpeech" / "train-clean-100"
    align = root / "alignments" / "train-clean-100"
    done = root / "COMPLETE"
    ident = {"n": n, "speakers": speakers, "seed": seed, "short": list(short)}
    if done.is_file() and json.loads(done.read_text()) == ident:
        return subset
    if subset.exists():
        shutil.rmtree(root / "LibriSpeech")
        shutil.rmtree(root / "alignments", ignore_errors=True)
    targets = durations(n, seed, short)
    per_spk = -(-n // speakers)
    # eSpeak sentences are ~2-4 s: enough of them for every speaker's total length.
    need = int(sum(targets) / 1.5) + 4 * speakers
    accents = ("en-us", "en-gb")
    spk_per_acc = -(-speakers // len(accents))
    syn = load_corpus(f"synthetic:{root / f'espeak{need}'}?n={need}&seed={seed}&accents={','.join(accents)}"
                      f"&speakers_per_accent={spk_per_acc}&progress={int(progress)}")
    by_spk: dict[str, list] = {}
    for u in syn:
        by_spk.setdefault(u.speaker, []).append(u)
    names = sorted(by_spk)[:speakers]
    genders = {}
    k = 0
    for si, name in enumerate(names):
        spk_id, chapter = str(100 + si * 7), str(1000 + si * 13)
        pool, pi = by_spk[name], 0
        genders[spk_id] = next((v for c, v in pool[0].extra if c == "gender"), "unknown")
        d = subset / spk_id / chapter
        ad = align / spk_id / chapter
        d.mkdir(parents=True, exist_ok=True)
        ad.mkdir(parents=True, exist_ok=True)
        trans = []
        for j in range(per_spk):
            if k >= n:
                break
            pieces, phones, t, words = [], [], 0.0, []
            while t < targets[k] or not pieces:
                u = pool[pi % len(pool)]
                pi += 1
                audio, sr = sf.read(u.path, dtype="float32")
                audio = resample_poly(audio, SR, sr).astype(np.float32) if sr != SR else audio
                for iv in u.phones:
                    phones.append(Interval(t + iv.start, t + iv.end, iv.label))
                words.append(next((v for c, v in u.extra if c == "text"), ""))
                pieces.append(audio)
                t += len(audio) / SR
            audio = np.concatenate(pieces)
            uid = f"{spk_id}-{chapter}-{j:04d}"
            sf.write(d / f"{uid}.flac", audio, SR, format="FLAC", subtype="PCM_16")
            dur = len(audio) / SR
            phones = [Interval(iv.start, min(iv.end, dur), iv.label) for iv in phones if iv.start < dur]
            write_textgrid(ad / f"{uid}.TextGrid", {"words": [], "phones": phones}, xmax=dur)
            trans.append(f"{uid} {' '.join(words).upper()}")
            k += 1
        (d / f"{spk_id}-{chapter}.trans.txt").write_text("\n".join(trans) + "\n")
    lines = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    lines += [f"{s:<5}| {'F' if g == 'female' else 'M'} | train-clean-100  | 25.00 | eSpeak {s}" for s, g in genders.items()]
    (root / "LibriSpeech" / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n")
    done.write_text(json.dumps(ident))
    return subset


def random_study(study: Path, corpus_spec: str, out: Path, sets: list[str]) -> tuple[Path, list[tuple[str, str]]]:
    """Copy ``study`` to ``out/study.toml`` with random-weight codecs and the given corpus.

    Returns the copy and the (old spec, new spec) substitutions made.
    """
    import tomllib

    text = study.read_text()
    data = tomllib.loads(text)
    subs = []
    for name, c in data.get("codecs", {}).items():
        kind = re.split(r"[:?]", c["spec"], maxsplit=1)[0]
        new = c["spec"] if "random_init=1" in c["spec"] else RANDOM_SPECS[kind](c["spec"])
        subs.append((c["spec"], new))
        block = re.search(rf"^\[codecs\.{re.escape(name)}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
        body = block.group(1).replace(f'spec = "{c["spec"]}"', f'spec = "{new}"')
        if "save_random" not in body:
            body = body.rstrip("\n") + "\nsave_random = true\n\n"
        text = text[:block.start(1)] + body + text[block.end(1):]
    for name, c in data.get("corpora", {}).items():
        text = text.replace(f'spec = "{c["spec"]}"', f'spec = "{corpus_spec}"')
    for s in sets:  # section.sub.key=value, value in TOML syntax
        key, _, value = s.partition("=")
        *section, opt = key.split(".")
        head = f"[{'.'.join(section)}]"
        block = re.search(rf"^{re.escape(head)}\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
        if block is None:
            raise SystemExit(f"--set {s}: no table {head} in {study}")
        body = re.sub(rf"^{re.escape(opt)}\s*=.*$\n?", "", block.group(1), flags=re.M)
        body = f"{opt} = {value}\n" + body
        text = text[:block.start(1)] + body + text[block.end(1):]
    out.mkdir(parents=True, exist_ok=True)
    copy = out / "study.toml"
    copy.write_text(text)
    ref = study.parent / "reference"
    if ref.is_dir():
        shutil.copytree(ref, out / "reference", dirs_exist_ok=True)
    return copy, subs


def step_peaks(run: Path) -> list[dict]:
    """Each step's record (id, status, seconds, peak RSS) in run order; from the step records
    themselves when the run was stopped before it wrote run.json."""
    if (run / "run.json").is_file():
        return list(json.loads((run / "run.json").read_text())["steps"])
    recs = [json.loads(p.read_text()) for p in (run / ".steps").glob("*.json")]
    return sorted(recs, key=lambda r: r.get("started") or "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=str(Path(__file__).resolve().parents[1] / "studies" / "librispeech_probing.toml"))
    ap.add_argument("--n", type=int, default=120, help="utterances")
    ap.add_argument("--speakers", type=int, default=12)
    ap.add_argument("--short", default="2,14", help="range of the 90 %% shorter utterances' target seconds "
                                                   "(a tenth are 20-24.5 s whatever this is)")
    ap.add_argument("--out", default="/tmp/study_peak", help="work folder (corpus, study copy, run)")
    ap.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                    help="override an option of the study copy (TOML value), e.g. analyses.ablate.n_utts=10")
    ap.add_argument("--limit", type=float, default=1.5, help="GB a step may peak at")
    ap.add_argument("--corpus-only", action="store_true", help="build the corpus and the study copy, run nothing")
    args = ap.parse_args()

    out = Path(args.out)
    short = tuple(float(x) for x in args.short.split(","))
    subset = write_librispeech_layout(out / "data", args.n, args.speakers, short=short)
    spec = f"librispeech:{subset}?alignments={out / 'data' / 'alignments' / 'train-clean-100'}"
    copy, subs = random_study(Path(args.study), spec, out / "study", args.set)
    import soundfile as sf

    secs = [sf.info(str(p)).duration for p in sorted(subset.rglob("*.flac"))]
    print(f"corpus: {len(secs)} utterances, {sum(secs) / 60:.1f} min, {min(secs):.1f}-{max(secs):.1f} s, at {subset}")
    for old, new in subs:
        print(f"codec: {old}  ->  {new}")
    for s in args.set:
        print(f"set: {s}")
    if args.corpus_only:
        print(f"study copy: {copy}")
        return
    run = out / "run"
    cmd = [sys.executable, "-m", "codeclens", "run", str(copy), "--out", str(run), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr))
    print(f"\nrun: exit {proc.returncode}, wall {wall:.0f} s, CPU {cpu:.0f} s, "
          f"process peak {int(m.group(1)) / 1e6 if m else float('nan'):.2f} GB, load {os.getloadavg()[0]:.1f}")
    worst = 0.0
    for s in step_peaks(run):
        gb = (s.get("peak_rss_bytes") or 0) / 1e9
        worst = max(worst, gb)
        flag = "  > limit" if gb > args.limit else ""
        print(f"  {s['id']:<42} {s['status']:<8} {s.get('seconds') or 0:8.1f} s  peak {gb:5.2f} GB"
              f"  (start {(s.get('rss_start_bytes') or 0) / 1e9:4.2f}, {s.get('process') or 'runner'} process){flag}")
    if proc.returncode:
        print(proc.stderr[-3000:])
    sys.exit(1 if worst > args.limit else 0)


if __name__ == "__main__":
    main()
