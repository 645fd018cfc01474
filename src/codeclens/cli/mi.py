"""``codeclens mi``: mutual information between RVQ layers and speech attributes."""

from __future__ import annotations

from .tokens import add_store_analysis_parser, run_store_analysis


def add_parser(sub) -> None:
    from ..analyses.mi import MIConfig

    add_store_analysis_parser(
        sub, "mi", "per-layer MI with phone/speaker/F0: plug-in (Miller-Madow) and a CLUB bracket (Sadok §2.4)",
        MIConfig, run,
    )


def run(args) -> int:
    from ..analyses.mi import MIAnalysis, MIConfig

    return run_store_analysis(MIAnalysis(), MIConfig, args)
