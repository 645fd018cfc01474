"""``codeclens melrvq fit``: fit the built-in reference codec on a corpus."""

from __future__ import annotations

import dataclasses

from ..config import add_dataclass_args, from_args


@dataclasses.dataclass(frozen=True)
class MelRVQFitConfig:
    corpus: str
    """Corpus spec to fit on."""
    out: str
    """Output directory (melrvq.json + melrvq.safetensors)."""
    layers: int = 8
    """Residual layers."""
    codebook_size: int = 256
    """Codes per layer."""
    max_frames: int = 200_000
    """At most this many log-mel frames are used."""
    iters: int = 25
    """k-means iterations per layer."""
    seed: int = 0
    """Random seed."""
    device: str = "auto"
    """Torch device."""

    def __post_init__(self):
        if self.layers < 1 or self.codebook_size < 2 or self.iters < 1 or self.max_frames < 1:
            raise ValueError("need layers >= 1, codebook_size >= 2, iters >= 1, max_frames >= 1")


def add_parser(sub) -> None:
    p = sub.add_parser("melrvq", help="the built-in mel residual-VQ reference codec")
    s = p.add_subparsers(dest="melrvq_cmd", metavar="ACTION", required=True)
    f = s.add_parser("fit", help="fit melrvq codebooks on a corpus")
    add_dataclass_args(f, MelRVQFitConfig)
    f.set_defaults(func=run_fit)


def run_fit(args) -> int:
    from ..codecs.melrvq import MelRVQConfig, fit_melrvq
    from ..corpora import load_corpus
    from ..util.device import resolve_device

    cfg = from_args(MelRVQFitConfig, args)
    corpus = load_corpus(cfg.corpus)
    model = fit_melrvq(
        corpus, cfg.out, MelRVQConfig(n_layers=cfg.layers, codebook_size=cfg.codebook_size),
        max_frames=cfg.max_frames, iters=cfg.iters, seed=cfg.seed,
        device=resolve_device(cfg.device),
    )
    print(f"melrvq: {model.n_layers} layers x {model.codebook_sizes[0]} codes saved to {cfg.out}")
    print(f"use it as: --codec 'melrvq?checkpoint={cfg.out}'")
    return 0
