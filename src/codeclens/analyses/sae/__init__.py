"""``sae`` and ``sae-latents``: TopK sparse autoencoders on codec representations.

``sae`` reproduces Wang et al. 2026: for every store a q × s sweep of TopK SAEs
trained concurrently on the SAE speakers, logistic regression on z, z_pos and
z_mag (classifier speakers) scored on held-out test speakers, ΔF1 against the
same classifier on u, activation density, dead latents, FVU and L0, a feature
browser per SAE, and published-vs-ours tables when a store's codec is one the
paper reports. ``sae-latents`` (beyond the paper) trains frame-level SAEs per
layer and scores every latent for phone, speaker and F0.

This module stays light (configs and registration only); the work is imported
when an analysis runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .. import ANALYSES
from ..base import Analysis, AnalysisResult
from .config import PAPER_Q, PAPER_S, LatentProbeConfig, SAEStudyConfig


@ANALYSES.register("sae")
class SAEAnalysis(Analysis):
    name = "sae"
    title = "Sparse autoencoders: ΔF1, position vs magnitude, activation density"
    Config = SAEStudyConfig

    def run(self, stores: Sequence[Any], cfg: SAEStudyConfig, out: Path, progress: bool = True) -> AnalysisResult:
        from .study import SAERunner

        return SAERunner().run(stores, cfg, out, progress)


@ANALYSES.register("sae-latents")
class LatentProbeAnalysis(Analysis):
    name = "sae-latents"
    title = "Frame-level SAE latents per layer: which are monosemantic for phone, speaker, F0?"
    Config = LatentProbeConfig

    def run(self, stores: Sequence[Any], cfg: LatentProbeConfig, out: Path, progress: bool = True) -> AnalysisResult:
        from .latents import LatentRunner

        return LatentRunner().run(stores, cfg, out, progress)


__all__ = ["PAPER_Q", "PAPER_S", "LatentProbeAnalysis", "LatentProbeConfig", "SAEAnalysis", "SAEStudyConfig"]
