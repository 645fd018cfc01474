"""``codeclens tokens``: code <-> label association and codebook usage per RVQ layer."""

from __future__ import annotations

from ..config import add_dataclass_args, from_args


def add_parser(sub) -> None:
    from ..analyses.tokens import TokensConfig

    p = sub.add_parser(
        "tokens", help="co-occurrence of each layer's codes with units/phones/speakers (Sadok et al. 2025 §2.1)"
    )
    p.add_argument("--store", action="append", required=True, metavar="DIR",
                   help="feature store directory (repeat for one panel per codec)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_dataclass_args(p, TokensConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..analyses.tokens import TokensAnalysis, TokensConfig
    from ..store.reader import open_stores

    cfg = from_args(TokensConfig, args)
    res = TokensAnalysis()(open_stores(args.store), cfg, args.out, progress=not args.quiet)
    print(res.summary)
    print(f"tokens: {len(res.artifacts)} artifacts written to {args.out}")
    return 0
