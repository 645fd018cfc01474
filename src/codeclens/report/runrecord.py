"""A study run's record (``run.json``) read once, for the commands that work on finished runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import CodeclensError


@dataclasses.dataclass(frozen=True)
class RunRecord:
    root: Path
    kinds: dict[str, str]
    """Analysis entry name -> analysis kind."""
    corpora: dict[str, str]
    """Corpus entry name -> corpus spec."""
    codec_labels: list[str]
    """Codec display labels in the study's order."""
    steps: list[dict[str, Any]]

    def analysis_steps(self, kind: str | None = None) -> list[tuple[dict[str, Any], Path]]:
        """(step record, output folder) of the analysis steps, of one ``kind`` when given."""
        return [(s, self.root / s["out"]) for s in self.steps
                if s["kind"] == "analysis" and (kind is None or self.kinds.get(s["group"]) == kind)]


def read_run(run_dir: str | Path, missing: str = "not a study run directory (no run.json)") -> RunRecord:
    """The run record of ``run_dir``; a one-line error when it is absent (``missing``) or unreadable."""
    root = Path(run_dir)
    rj = root / "run.json"
    if not rj.is_file():
        raise CodeclensError(f"{root}: {missing}")
    try:
        run = json.loads(rj.read_text())
        study = run["study"]
        return RunRecord(
            root=root,
            kinds={a["name"]: a["kind"] for a in study["analyses"]},
            corpora={c["name"]: c["spec"] for c in study["corpora"]},
            codec_labels=[c.get("label") or c["name"] for c in study["codecs"]],
            steps=list(run["steps"]),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise CodeclensError(f"{rj}: unreadable run record ({type(e).__name__}: {e})") from None
