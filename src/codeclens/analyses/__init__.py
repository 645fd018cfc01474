"""Analyses: pure functions of (stores, config) -> tables + figures in a run directory.

Each analysis module registers itself with ``@ANALYSES.register("name")``; the
study runner and the report find them here.
"""

from ..registry import Registry
from .base import Analysis, AnalysisResult, Artifact

ANALYSES: Registry[type[Analysis]] = Registry("analysis", __name__)

__all__ = ["ANALYSES", "Analysis", "AnalysisResult", "Artifact"]
