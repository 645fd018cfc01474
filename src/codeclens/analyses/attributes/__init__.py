"""``attributes``: the AnCoGen-Codec attribute model of Sadok et al. 2025 (Table 1).

A masked encoder-decoder transformer between a codec's tokens and speech attribute
tokens (content, pitch, loudness, open-set speaker identity), trained MAE-style with
Dirichlet masking ratios so one model reads attributes from tokens (analysis) and
regenerates tokens from edited attributes (resynthesis, voice conversion).

This module stays light (config and registration); the work is imported when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .. import ANALYSES
from ..base import Analysis, AnalysisResult
from .config import AttributesConfig


@ANALYSES.register("attributes")
class AttributesAnalysis(Analysis):
    name = "attributes"
    title = "Attribute model (AnCoGen-Codec): analysis, resynthesis, voice conversion"
    Config = AttributesConfig
    resumable = True  # the checkpoint resumes; speaker embeddings are cached per store fingerprint

    def run(self, stores: Sequence[Any], cfg: AttributesConfig, out: Path, progress: bool = True) -> AnalysisResult:
        from .run import run_attributes

        return run_attributes(stores, cfg, Path(out), progress)


__all__ = ["AttributesAnalysis", "AttributesConfig"]
