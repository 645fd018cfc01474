"""The HTML report of a study run (see :mod:`codeclens.report.html`)."""

from .html import write_report

__all__ = ["write_report"]
