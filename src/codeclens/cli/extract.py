"""``codeclens extract`` and ``codeclens info``."""

from __future__ import annotations

import json

from ..config import add_dataclass_args, from_args
from ..store.writer import ExtractConfig, extract


def add_parser(sub) -> None:
    p = sub.add_parser("extract", help="encode a corpus with a codec into a feature store")
    add_dataclass_args(p, ExtractConfig, skip={"inputs"})
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_extract)

    q = sub.add_parser("info", help="summarise a feature store")
    q.add_argument("store", help="store directory")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_info)


def run_extract(args) -> int:
    cfg = from_args(ExtractConfig, args)
    path = extract(cfg, progress=not args.quiet)
    _print_summary(str(path), False)
    return 0


def run_info(args) -> int:
    _print_summary(args.store, args.json)
    return 0


def _print_summary(path: str, as_json: bool) -> None:
    from ..store import Store

    s = Store(path).summary()
    if as_json:
        print(json.dumps(s, indent=2))
        return
    print(f"store        {s['path']}")
    print(f"codec        {s['codec']}  ({s['layers']} layers, {s['frame_rate']:g} Hz, codebooks {_sizes(s['codebook_sizes'])})")
    print(f"corpus       {s['corpus']}")
    print(f"utterances   {s['utterances']}  ({s['speakers']} speakers, {s['skipped']} skipped)")
    print(f"frames       {s['frames']}")
    print(f"hours        {s['hours']:.3f}")
    print(f"latent       {'yes' if s['latent'] else 'no'}")
    print(f"labels       {', '.join(s['labels']) or '(none)'}")
    print(f"disk         {s['disk_mb']:.2f} MB")


def _sizes(sizes: list[int]) -> str:
    return f"{sizes[0]}" if len(set(sizes)) == 1 else ",".join(map(str, sizes))
