"""Run a study: every step in order, skipping what is done, then write the report.

Each step's key is the hash of its configuration and of the outputs of the
steps it reads (an output is identified by the key and finish time of the run
that produced it). A step whose recorded key matches is skipped; a changed
option changes the key of that step and of everything downstream of it, and
nothing else. Records live in ``RUN/.steps/``; a step is recorded as
``running`` before it starts, so an interrupted run starts it again (extraction
resumes from its finished shards, a synthetic corpus from its finished
utterances, a resumable analysis from its own cache). Every line of progress
also goes to ``RUN/run.log``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import CodeclensError
from ..util.atomic import write_json, write_text
from ..util.lock import pid_lock
from ..util.provenance import config_hash, provenance
from .config import Study, StudyError, describe
from ..util.heap import mmap_large_buffers, release_memory
from .isolate import StepFailed, available as isolate_available, run_step
from .rss import current_bytes, peak_bytes, reset_peak
from .steps import Step, json_safe, plan

LOG = "run.log"
RUN_JSON = "run.json"
STEPS = ".steps"
#: Step kinds run in their own process (corpus steps only list and summarise a corpus: cheap).
ISOLATED_KINDS = ("fit", "random", "extract", "analysis")


@dataclasses.dataclass
class RunResult:
    root: Path
    ran: list[str]
    skipped: list[str]
    failed: list[str]
    blocked: list[str]
    seconds: float
    report: Path | None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Runner:
    """Plans and runs a study in ``root``."""

    def __init__(self, study: Study, root: str | Path, force: Sequence[str] = (), progress: bool = True,
                 echo: Callable[[str], None] | None = None):
        self.study = study
        self.root = Path(root)
        self.progress = progress
        self.echo = echo if echo is not None else (lambda m: print(m, file=sys.stderr, flush=True))
        self.steps, self.ctx = plan(study, self.root)
        self.ctx.progress = progress
        self.ctx.log = self.log
        self.forced = self._match_force(force)

    # -- bookkeeping ----------------------------------------------------------

    def _match_force(self, names: Sequence[str]) -> set[str]:
        forced: set[str] = set()
        for n in names:
            hit = {s.id for s in self.steps if n in (s.id, s.kind, s.group) or s.id.startswith(n + ":")
                   or (s.kind == "analysis" and s.config.get("analysis") == n)}
            if not hit:
                known = sorted({s.id for s in self.steps} | {s.kind for s in self.steps} | {s.group for s in self.steps})
                raise StudyError(f"--force {n}: no such step; known: {', '.join(known)}")
            forced |= hit
        return forced

    def _record_path(self, step_id: str) -> Path:
        safe = step_id.replace(":", "__").replace("/", "--")
        return self.root / STEPS / f"{safe}.json"

    def record(self, step_id: str) -> dict[str, Any] | None:
        p = self._record_path(step_id)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return None

    def _write_record(self, rec: dict[str, Any]) -> None:
        write_json(self._record_path(rec["id"]), json_safe(rec))

    def log(self, msg: str) -> None:
        line = f"{_dt.datetime.now().strftime('%H:%M:%S')} {msg}"
        with open(self.root / LOG, "a") as f:
            f.write(line + "\n")
        self.echo(line)

    def isolated(self, step: Step) -> bool:
        """Whether ``step`` runs in its own process (:mod:`codeclens.study.isolate`): the heavy kinds, when
        the study asks for it (the default) and the platform can."""
        return self.study.meta.isolate and step.kind in ISOLATED_KINDS and isolate_available()

    def inputs(self, step: Step) -> dict[str, str | None]:
        """The tokens of the steps ``step`` depends on (what its key and a store's identity hold)."""
        return {d: (self.record(d) or {}).get("token") for d in step.deps}

    def key(self, step: Step) -> str:
        return config_hash({"id": step.id, "config": step.config, "inputs": self.inputs(step)})

    def _output_ok(self, step: Step) -> bool:
        if step.kind == "extract":
            # A damaged store is not up to date: the step re-runs and rebuilds it.
            from ..store.reader import check_store, rebuild_reason

            try:
                m = check_store(step.out)
            except CodeclensError as e:
                self.log(f"{step.id}: store needs rebuilding: {e}")
                return False
            why = rebuild_reason(step.out, m)
            if why:
                self.log(f"{step.id}: store needs rebuilding: {why}")
            return why is None
        if step.kind == "analysis":
            return (step.out / "result.json").is_file()
        if step.kind in ("fit", "random"):
            return step.out.is_dir()
        return True

    # -- running --------------------------------------------------------------

    def run(self, report: bool = True) -> RunResult:
        if self.root.exists() and not self.root.is_dir():
            raise CodeclensError(f"run directory {self.root} is a file; give another --out")
        self.root.mkdir(parents=True, exist_ok=True)
        mmap_large_buffers()  # one process runs every step: no step's freed buffers stay resident
        from ..util.figures import codec_order

        # every figure of the run gives a codec the same colour, in the study's codec order
        with _lock(self.root), codec_order(c.display for c in self.study.codecs):
            return self._run(report)

    def _run(self, report: bool) -> RunResult:
        t_run = time.perf_counter()
        started = _now()
        study_copy = self.root / "study.toml"
        write_text(study_copy, self.study.text)
        self.log(f"=== run of {self.study.path} in {self.root} ({len(self.steps)} steps) ===")
        ran, skipped, failed, blocked = [], [], [], []
        status: dict[str, str] = {}
        n = len(self.steps)
        threads = None
        if self.study.meta.threads:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(self.study.meta.threads)
        try:
            for i, step in enumerate(self.steps, 1):
                tag = f"[{i}/{n}] {step.id}"
                bad = [d for d in step.deps if status.get(d) in ("failed", "blocked")]
                if bad:
                    status[step.id] = "blocked"
                    blocked.append(step.id)
                    self.log(f"{tag}: not run, needs {', '.join(bad)}")
                    continue
                key = self.key(step)
                rec = self.record(step.id)
                if (step.id not in self.forced and rec and rec.get("status") == "done" and rec.get("key") == key
                        and self._output_ok(step)):
                    status[step.id] = "skipped"
                    skipped.append(step.id)
                    self.log(f"{tag}: up to date, skipped (key {key})")
                    continue
                resume = step.resumable and rec is not None and rec.get("key") == key and step.id not in self.forced
                # A changed extraction is built beside the old store and swapped in when complete
                # (extract's own --overwrite path, its identity holding the inputs' tokens), so an
                # interrupted rebuild loses nothing.
                rebuild_beside = step.kind == "extract" and step.id not in self.forced
                if not resume and step.out.exists() and not rebuild_beside:
                    self._clean(step)
                self.log(f"{tag}: {'resuming' if resume else 'running'} (key {key})")
                rec = {"id": step.id, "kind": step.kind, "key": key, "status": "running", "started": _now(),
                       "out": str(step.out.relative_to(self.root)), "config": step.config, "deps": list(step.deps)}
                self._write_record(rec)
                t0 = time.perf_counter()
                self.ctx.inputs = self.inputs(step)
                isolated = self.isolated(step)
                if not isolated:
                    release_memory()
                    rss_start = current_bytes()
                    was_reset = reset_peak()
                try:
                    if isolated:
                        info, peak, rss_start = run_step(self.study, self.root, step.id, self.ctx.inputs,
                                                         self.progress, self.log)
                        mem = {"peak_rss_bytes": peak, "peak_rss_of": "step", "process": "own"}
                    else:
                        info = step.work(step, self.ctx) or {}
                        mem = {**_peak(was_reset), "process": "runner"}
                except (KeyboardInterrupt, SystemExit):
                    self.log(f"{tag}: interrupted; re-run the same command to resume")
                    raise
                except Exception as e:  # recorded and reported; independent steps go on
                    dt = time.perf_counter() - t0
                    if isinstance(e, StepFailed):
                        msg, tb = e.message, e.traceback
                        rec.update(peak_rss_bytes=e.peak, peak_rss_of="step", process="own", rss_start_bytes=e.start)
                    else:
                        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                        if not isinstance(e, CodeclensError):
                            msg = f"{type(e).__name__}: {msg}"
                        tb = traceback.format_exc()
                        rec.update(_peak(was_reset), process="runner", rss_start_bytes=rss_start)
                    with open(self.root / LOG, "a") as f:
                        f.write(tb)
                    rec.update(status="failed", error=msg, seconds=dt, finished=_now())
                    self._write_record(rec)
                    status[step.id] = "failed"
                    failed.append(step.id)
                    self.log(f"{tag}: FAILED after {dt:.1f}s: {msg}")
                    continue
                dt = time.perf_counter() - t0
                fin = _now()
                rec.update(mem, rss_start_bytes=rss_start)
                rec.update(status="done", seconds=dt, finished=fin, info=info,
                           token=config_hash({"key": key, "finished": fin, "t": time.time_ns()}))
                self._write_record(rec)
                status[step.id] = "ran"
                ran.append(step.id)
                start = f" ({rss_start / 1e9:.2f} GB at its start)" if rss_start else ""
                where = ", own process" if isolated else ""
                self.log(f"{tag}: done in {dt:.1f}s, peak RSS {(rec['peak_rss_bytes'] or 0) / 1e9:.2f} GB"
                         + (start + where if rec["peak_rss_of"] == "step" else " (process lifetime)"))
        finally:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
            seconds = time.perf_counter() - t_run
            self._write_run_json(started, seconds, status)
        report_path = None
        if report:
            from ..report.html import write_report

            report_path = write_report(self.root)
            self.log(f"report: {report_path}")
        self.log(f"=== {len(ran)} ran, {len(skipped)} skipped, {len(failed)} failed, {len(blocked)} not run; "
                 f"{seconds:.1f}s ===")
        return RunResult(self.root, ran, skipped, failed, blocked, seconds, report_path)

    def _clean(self, step: Step) -> None:
        out = step.out.resolve()
        root = self.root.resolve()
        if root not in out.parents:  # never delete outside the run directory
            raise CodeclensError(f"refusing to delete {out}: outside the run directory {root}")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()

    def _write_run_json(self, started: str, seconds: float, status: dict[str, str]) -> None:
        steps = []
        for s in self.steps:
            rec = self.record(s.id) or {}
            steps.append({
                "id": s.id, "kind": s.kind, "group": s.group, "out": str(s.out.relative_to(self.root)),
                "this_run": status.get(s.id, "not reached"), "status": rec.get("status", "pending"),
                "seconds": rec.get("seconds"), "peak_rss_bytes": rec.get("peak_rss_bytes"),
                "rss_start_bytes": rec.get("rss_start_bytes"),
                "peak_rss_of": rec.get("peak_rss_of"), "process": rec.get("process"), "finished": rec.get("finished"), "error": rec.get("error"),
                "info": rec.get("info", {}), "key": rec.get("key"),
            })
        write_json(self.root / RUN_JSON, json_safe({
            "study": describe(self.study), "study_text": self.study.text, "title": self.study.title,
            "description": self.study.meta.description, "started": started, "finished": _now(),
            "seconds": seconds, "steps": steps, "provenance": provenance(),
            "published": [dataclasses.asdict(p) for p in self.study.published],
        }))


def _peak(was_reset: bool) -> dict[str, Any]:
    """The step's peak resident set for its record (see :mod:`codeclens.study.rss`)."""
    b, of = peak_bytes(was_reset)
    return {"peak_rss_bytes": b, "peak_rss_of": of}


def _lock(root: Path):
    """One run per directory at a time (a stale lock of a dead process is taken over)."""
    return pid_lock(root / ".lock", str(root))


def run_study(study: Study, root: str | Path, force: Sequence[str] = (), progress: bool = True,
              echo: Callable[[str], None] | None = None, report: bool = True) -> RunResult:
    return Runner(study, root, force, progress, echo).run(report=report)
