"""result.json records wall and CPU time of the analysis: waiting counts in one, not the other."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

from codeclens.analyses.base import Analysis, AnalysisResult


_SPIN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end:\n    pass\n"


@dataclasses.dataclass(frozen=True)
class _Cfg:
    mode: str = "busy"
    """busy: spin the CPU; sleep: wait; child: wait for a child process that spins."""


class _Timed(Analysis):
    name, title, Config = "timed", "Timing check", _Cfg

    def run(self, stores, cfg, out, progress=True) -> AnalysisResult:
        if cfg.mode == "sleep":
            time.sleep(0.3)
        elif cfg.mode == "child":
            subprocess.run([sys.executable, "-c", _SPIN], check=True)
        else:  # 0.3 s of this process's CPU, however loaded the machine is
            end = time.process_time() + 0.3
            while time.process_time() < end:
                pass
        return AnalysisResult(self.name, self.title)


def test_cpu_seconds_count_work_not_waiting(tmp_path):
    busy = json.loads((_Timed()([], _Cfg("busy"), tmp_path / "b", False), tmp_path / "b" / "result.json")[1].read_text())
    idle = json.loads((_Timed()([], _Cfg("sleep"), tmp_path / "s", False), tmp_path / "s" / "result.json")[1].read_text())
    assert busy["seconds"] >= 0.3 and idle["seconds"] >= 0.3
    assert busy["cpu_seconds"] >= 0.3
    assert idle["cpu_seconds"] < 0.1
    assert AnalysisResult.load(tmp_path / "b").cpu_seconds == busy["cpu_seconds"]


def test_cpu_seconds_count_the_children_it_waited_for(tmp_path):
    """Work done by child processes (the figure writers are forked copies) is the analysis' CPU too."""
    res = _Timed()([], _Cfg("child"), tmp_path / "c", False)
    assert res.cpu_seconds >= 0.3
