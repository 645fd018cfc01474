"""``codeclens tsne``: t-SNE views of one RVQ layer (codebook, speakers, pitch)."""

from __future__ import annotations

from ..config import add_dataclass_args, from_args


def add_parser(sub) -> None:
    from ..analyses.tsne import TsneConfig

    p = sub.add_parser(
        "tsne", help="t-SNE of a layer's codebook by phone class, utterance means by speaker, vowel codes by F0"
    )
    p.add_argument("--store", required=True, metavar="DIR", help="feature store directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_dataclass_args(p, TsneConfig)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..analyses.tsne import TsneAnalysis, TsneConfig
    from ..store.reader import Store

    cfg = from_args(TsneConfig, args)
    res = TsneAnalysis()([Store(args.store)], cfg, args.out, progress=not args.quiet)
    print(res.summary)
    print(f"tsne: {len(res.artifacts)} artifacts written to {args.out}")
    return 0
