"""The CLI builds only the parser of the command it runs, and the registry returns a registered analysis
without importing every other one (both imported torch's ablation code and scipy's FFT for a probe run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}).stdout


def test_probe_command_imports_only_its_module():
    out = _run(
        "import sys\n"
        "from codeclens.cli import build_parser\n"
        "p = build_parser(['probe', '--store', 'x', '--out', 'y'])\n"
        "a = p.parse_args(['probe', '--store', 'x', '--out', 'y'])\n"
        "from codeclens.analyses import ANALYSES\n"
        "ANALYSES.get('probes')\n"
        "print(a.command, sorted(m for m in sys.modules if m.startswith(('codeclens.cli.', 'codeclens.analyses.ablate'))))\n")
    assert out.split() == ["probe", "['codeclens.cli.probe']"]


def test_other_names_and_no_command_build_every_command():
    # "info" is registered by cli/extract.py: no module of that name, so every command is built.
    out = _run(
        "from codeclens.cli import build_parser\n"
        "for argv in (['info', 'STORE'], [], ['--version'], ['nosuch']):\n"
        "    sub = next(a for a in build_parser(argv)._actions if a.dest == 'command')\n"
        "    print(len(sub.choices), 'info' in sub.choices, 'probe' in sub.choices, 'ablate' in sub.choices)\n")
    rows = [line.split() for line in out.splitlines()]
    assert len(rows) == 4 and all(r == rows[0] for r in rows) and rows[0][1:] == ["True"] * 3
    assert int(rows[0][0]) > 10


def test_unknown_analysis_still_lists_every_analysis():
    out = _run(
        "from codeclens.analyses import ANALYSES\n"
        "from codeclens.errors import SpecError\n"
        "try:\n    ANALYSES.get('nosuch')\nexcept SpecError as e:\n    print(e)\n")
    assert "probes" in out and "ablate" in out
