"""Studies: one TOML file names corpora x codecs x analyses; ``codeclens run`` does all of it."""

from .config import Study, StudyError, load_study, parse_study
from .runner import RunResult, Runner, run_study

__all__ = ["RunResult", "Runner", "Study", "StudyError", "load_study", "parse_study", "run_study"]
