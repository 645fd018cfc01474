"""``codeclens codec list | info SPEC | check SPEC | save-random --codec SPEC --out DIR``."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from ..config import add_dataclass_args, from_args
from ..errors import CodeclensError


@dataclasses.dataclass(frozen=True)
class SaveRandomConfig:
    codec: str
    """Codec spec to build with random weights, e.g. 'encodec:24khz@6kbps?size=tiny'."""
    out: str
    """Output checkpoint directory (load it with checkpoint=DIR)."""
    seed: int | None = None
    """Seed of the weights and codebook initialisation (default: the spec's seed, else 0)."""
    device: str = "cpu"
    """Torch device used to build and initialise the model."""


def add_parser(sub) -> None:
    p = sub.add_parser("codec", help="list codecs, describe one, or save a random-weight checkpoint")
    s = p.add_subparsers(dest="codec_cmd", metavar="ACTION", required=True)

    lst = s.add_parser("list", help="the codec adapters and their spec strings")
    lst.set_defaults(func=run_list)

    info = s.add_parser("info", help="load a codec and print its rates, layers and codebooks")
    info.add_argument("spec", help="codec spec, e.g. 'dac:16khz?checkpoint=DIR'")
    info.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=run_info)

    ck = s.add_parser("check", help="run the adapter invariants on a codec and print a pass/fail table")
    ck.add_argument("spec", help="codec spec: built-in, hub id, local checkpoint or python:package.module:Class")
    ck.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    ck.add_argument("--seconds", type=float, default=1.0, help="seconds of test audio (default: 1)")
    ck.add_argument("--seed", type=int, default=0, help="seed of the test audio and random codes (default: 0)")
    ck.add_argument("--only", default=None, help="comma-separated check names (default: all)")
    ck.add_argument("--json", action="store_true", help="print JSON")
    ck.set_defaults(func=run_check)

    sr = s.add_parser("save-random", help="save a random-weight checkpoint (a probing control, or for tests)")
    add_dataclass_args(sr, SaveRandomConfig)
    sr.set_defaults(func=run_save_random)


#: Spec strings shown by ``codeclens codec list`` (kind -> examples).
EXAMPLES = {
    "encodec": "encodec:24khz@{1.5,3,6,12,24}kbps, encodec:48khz@{3,6,12,24}kbps",
    "dac": "dac:16khz, dac:24khz, dac:44khz",
    "mimi": "mimi, mimi?layers=32",
    "speechtokenizer": "speechtokenizer?checkpoint=DIR (config.json + weights)",
    "bigcodec": "bigcodec?checkpoint=bigcodec.pt (the release's file)",
    "xcodec": "xcodec:{0.5,1,1.5,2,4}kbps",
    "xcodec2": "xcodec2, xcodec2?fsq_split=1 (each FSQ dimension a layer)",
    "neucodec": "neucodec, neucodec?fsq_split=1",
    "melrvq": "melrvq?checkpoint=DIR (fit with 'codeclens melrvq fit')",
}


def run_list(args) -> int:
    from ..codecs import CODECS

    for name in CODECS.names():
        cls = CODECS.get(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else ""
        opts = ", ".join(list(cls.common_options) + list(cls.options))
        print(f"{name:16s} {EXAMPLES.get(name, name)}")
        if summary:
            print(f"{'':16s} {summary}")
        print(f"{'':16s} options: {opts}")
    print(f"{'python':16s} python:package.module:Class  (a plug-in; see docs/plugins.md)")
    return 0


def run_info(args) -> int:
    from ..codecs import load_codec

    codec = load_codec(args.spec, args.device)
    d = codec.describe()
    d["hop_samples"] = codec.samples_per_frame()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    sizes = d["codebook_sizes"]
    print(f"codec        {d['spec']}")
    print(f"adapter      {d['adapter']}")
    print(f"sample rate  {d['sample_rate']} Hz")
    print(f"frame rate   {d['frame_rate']:g} Hz ({d['hop_samples']:g} samples per frame)")
    print(f"layers       {d['n_layers']}")
    print(f"codebooks    {sizes[0] if len(set(sizes)) == 1 else ','.join(map(str, sizes))} codes per layer")
    print(f"table dim    {d['dim']}")
    print(f"frame offset {d['frame_offset_s'] * 1000:+g} ms (labels are read at frame centres plus this)")
    if "chunk_samples" in d:
        print(f"chunks       {d['chunk_samples']} samples every {d['chunk_stride_samples']} (frame times follow them)")
    return 0


def run_check(args) -> int:
    """Exit 0 when every applicable check passes, 1 when one fails (2: bad input)."""
    from ..codecs import load_codec
    from ..codecs.check import CHECKS, format_table, run_checks

    if not args.seconds > 0:
        raise CodeclensError(f"--seconds must be > 0 (got {args.seconds:g})")
    only = None
    if args.only:
        only = [c.strip() for c in args.only.split(",") if c.strip()]
        bad = [c for c in only if c not in CHECKS]
        if bad:
            raise CodeclensError(f"--only: unknown check(s) {', '.join(bad)}; known: {', '.join(CHECKS)}")
    codec = load_codec(args.spec, args.device)
    results = run_checks(codec, seconds=args.seconds, seed=args.seed, only=only)
    failed = [r.name for r in results if r.passed is False]
    if args.json:
        print(json.dumps({"codec": codec.describe(), "checks": [dataclasses.asdict(r) for r in results],
                          "passed": not failed}, indent=2))
    else:
        print(f"codec {codec.describe()['spec']}  ({codec.n_layers} layers, {codec.frame_rate:g} Hz)")
        print(format_table(results))
        print(f"{len(failed)} of {len(results)} checks failed: {', '.join(failed)}" if failed else "all checks passed")
    return 1 if failed else 0


def run_save_random(args) -> int:
    from ..codecs.testing import save_random_checkpoint

    cfg = from_args(SaveRandomConfig, args)
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise CodeclensError(f"--out {cfg.out} is a file; give a directory")
    spec = save_random_checkpoint(cfg.codec, cfg.out, seed=cfg.seed, device=cfg.device)
    print(f"random-weight checkpoint saved to {cfg.out}")
    print(f"use it as: --codec '{spec}'")
    return 0
