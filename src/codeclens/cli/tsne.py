"""``codeclens tsne``: t-SNE views of one RVQ layer (codebook, speakers, pitch)."""

from __future__ import annotations

from .tokens import add_store_analysis_parser, run_store_analysis


def add_parser(sub) -> None:
    from ..analyses.tsne import TsneConfig

    add_store_analysis_parser(
        sub, "tsne", "t-SNE of a layer's codebook by phone class, utterance means by speaker, vowel codes by F0",
        TsneConfig, run, multi=False,
    )


def run(args) -> int:
    from ..analyses.tsne import TsneAnalysis, TsneConfig

    return run_store_analysis(TsneAnalysis(), TsneConfig, args)
