"""Benchmark: peak RSS of encoding one long utterance with a full load vs an extraction-only load.

For each codec spec, a full-size random-weight checkpoint is saved once (``random_init=1&seed=1``,
as benchmarks/study_peak.py and a study's ``save_random`` step make them) and reloaded through
the ordinary loader in a fresh process under ``/usr/bin/time -v``, which loads the codec
(``load_codec(spec)`` or ``load_codec(spec, extraction_only=True)``) and encodes one
speech-like utterance of ``--seconds``. It prints the peak resident set ("Maximum resident
set size") and CPU seconds (user + sys) of each, and checks the two gave the same codes.

    python benchmarks/extraction_peak.py                                      # SpeechTokenizer and EnCodec 24 kHz, 26 s
    python benchmarks/extraction_peak.py --codec dac:16khz --codec mimi --seconds 26
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CHILD = r"""
import hashlib, sys, torch
from codeclens.util.heap import mmap_large_buffers
mmap_large_buffers()  # as the extraction engines do
torch.set_num_threads(1)
from codeclens.codecs import load_codec
from codeclens.codecs.calibration import calibration_audio
spec, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
codec = load_codec(spec, "cpu", extraction_only=(mode == "extraction"))
x = torch.from_numpy(calibration_audio(codec.sample_rate, seconds, 11))[None]
codes, n = codec.encode(x, torch.tensor([x.shape[1]]))
print("CODES", hashlib.sha256(codes.numpy().tobytes()).hexdigest()[:16], int(n[0]))
"""


def checkpoint(spec: str, root: Path) -> str:
    """The spec that reloads a saved full-size random-weight ``spec`` (saved once, in its own process)."""
    from codeclens.codecs.testing import reload_spec

    out = root / re.sub(r"[^A-Za-z0-9]+", "_", spec)
    if not out.is_dir():
        subprocess.run([sys.executable, "-c", "import sys; from codeclens.codecs.testing import save_random_checkpoint as s;"
                        " s(sys.argv[1], sys.argv[2], seed=1)", spec, str(out)], check=True)
    return reload_spec(spec, out)


def measure(spec: str, mode: str, seconds: float) -> dict:
    r = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", CHILD, spec, mode, str(seconds)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{spec} ({mode}) failed:\n{r.stderr[-2000:]}")
    def field(name: str) -> float:
        return float(re.search(rf"{re.escape(name)}: ([0-9.]+)", r.stderr).group(1))
    return {"peak_gb": field("Maximum resident set size (kbytes)") / 1e6,
            "cpu_s": field("User time (seconds)") + field("System time (seconds)"),
            "codes": re.search(r"CODES (\S+ \d+)", r.stdout).group(1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", action="append", help="codec spec without random_init (repeatable)")
    ap.add_argument("--seconds", type=float, default=26.0)
    ap.add_argument("--out", default="/tmp/extraction_peak", help="where the random checkpoints are saved")
    args = ap.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    print(f"{'codec':28s} {'mode':10s} {'peak GB':>8s} {'CPU s':>7s}  codes")
    for spec in args.codec or ["speechtokenizer", "encodec:24khz@6kbps"]:
        ck = checkpoint(spec, root)
        got = {mode: measure(ck, mode, args.seconds) for mode in ("full", "extraction")}
        for mode, m in got.items():
            print(f"{spec:28s} {mode:10s} {m['peak_gb']:8.3f} {m['cpu_s']:7.1f}  {m['codes']}")
        if got["full"]["codes"] != got["extraction"]["codes"]:
            raise SystemExit(f"{spec}: extraction-only codes differ from the full load's")


if __name__ == "__main__":
    main()
