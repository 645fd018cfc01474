"""The 16-configuration SAE sweep: all trained concurrently (one pass over the data,
every batch fed to all SAEs) vs one configuration after another, same data and epochs.

Two data sources:
- ``utterance``: utterance-level vectors held in memory (the paper's setting);
- ``frames``: frame vectors materialised per batch from a store's codes
  (``cumulative:L`` of an 8-layer x 1024-code store), where the shared data path
  is more than a row gather.
For each, the wall time of both schedules, their ratio, and where the time goes
(data path vs SAE steps), at each torch intra-op thread count asked for.

    python benchmarks/sae_sweep.py [--d 128] [--n 4096] [--epochs 2] [--threads 1,2]
    python benchmarks/sae_sweep.py --step-model 128,256,512,1024   # CPU per step vs batch, d_z, k

``--step-model`` times ``Member.step`` (the real training step, AuxK on with a tenth of the
latents dead) for every configuration at each batch size and fits
``ms/step = d_z · (a + b · batch) + c · batch · k``: the coefficients of the time formula
in docs/sae.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from codeclens.analyses.sae.sweep import ArraySource, StoreSource, TrainConfig, paper_grid, train_sweep


class Timed:
    """A source that records the time spent producing batches."""

    def __init__(self, src):
        self.src, self.n, self.dim, self.seconds = src, src.n, src.dim, 0.0

    def get(self, idx):
        t = time.perf_counter()
        x = self.src.get(idx)
        self.seconds += time.perf_counter() - t
        return x


def make_store(root: Path, n: int, d: int, layers: int = 8, codes: int = 1024, seed: int = 0):
    from codeclens.store import Store
    from codeclens.store.arrays import write_store

    rng = np.random.default_rng(seed)
    tables = [rng.standard_normal((codes, d)).astype(np.float32) / (l + 1) for l in range(layers)]
    per = 200
    n_utt = n // per
    u = pd.DataFrame({"id": [f"u{i}" for i in range(n_utt)], "speaker": [f"s{i % 20}" for i in range(n_utt)],
                      "n_frames": per})
    c = rng.integers(0, codes, (n_utt * per, layers))
    return Store(write_store(root, c, tables, u, frame_rate=75.0))


def run(schedule: str, source, configs, train, device) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds of this process, seconds spent in the data path."""
    timed = Timed(source)
    t, c0 = time.perf_counter(), time.process_time()
    if schedule == "concurrent":
        train_sweep(configs, timed, train, seed=0, device=device, progress=False)
    else:
        for c in configs:
            train_sweep([c], timed, train, seed=0, device=device, progress=False)
    return time.perf_counter() - t, time.process_time() - c0, timed.seconds


def step_breakdown(configs, d: int, batch: int, train, reps: int = 3) -> pd.DataFrame:
    """CPU milliseconds per training step of each configuration, split into phases."""
    from codeclens.analyses.sae.model import mse
    from codeclens.analyses.sae.sweep import Member

    x = torch.randn(batch, d)
    rows = []
    for c in configs:
        m = Member(c, d, np.zeros(d, np.float32), 0, train, batch, torch.device("cpu"))
        m.step(x)
        ph = dict.fromkeys(("encode matmul", "top-k", "decode", "backward", "projection+Adam+renorm"), 0.0)
        for _ in range(reps):
            sae = m.sae
            t = time.process_time()
            pre = (x / sae.scale) @ sae.W_enc.t() - sae.W_enc @ sae.b_pre  # as Member.step
            t1 = time.process_time()
            z = sae._topk(pre, sae.k)
            t2 = time.process_time()
            loss = mse(sae.decode(z), x)
            t3 = time.process_time()
            m.opt.zero_grad(set_to_none=True)
            loss.backward()
            t4 = time.process_time()
            sae.project_decoder_grad()
            m.opt.step()
            sae.normalize_decoder()
            t5 = time.process_time()
            for key, dt in zip(ph, (t1 - t, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                ph[key] += 1000 * dt / reps
        rows.append({"q": f"{c.q:g}", "s": f"{c.s:g}", "d_z": sae.shape.d_z, "k": sae.k, **ph, "total_ms": sum(ph.values())})
    return pd.DataFrame(rows)


def step_model(batches: list[int], d: int, dead: float = 0.1, reps: int = 20) -> tuple[pd.DataFrame, np.ndarray]:
    """CPU ms per ``Member.step`` for each configuration and batch size, and the least-squares
    (a, b, c) of ``ms = d_z · (a + b · batch) + c · batch · k``."""
    from codeclens.analyses.sae.sweep import Member

    rows = []
    for batch in batches:
        x = torch.randn(batch, d)
        train = TrainConfig(lr=1e-4, batch_size=batch)
        for c in paper_grid(epochs=1, long_epochs=1):
            m = Member(c, d, np.zeros(d, np.float32), 0, train, 10 * batch, torch.device("cpu"))
            m.since_fired[: int(dead * m.sae.shape.d_z)] = 10**9  # dead: AuxK has work, as in training
            for _ in range(3):
                m.step(x)
            t = time.process_time()
            for _ in range(reps):
                m.step(x)
            rows.append({"batch": batch, "q": c.q, "s": c.s, "d_z": m.sae.shape.d_z, "k": m.sae.k,
                         "ms": 1000 * (time.process_time() - t) / reps})
    df = pd.DataFrame(rows)
    a = np.stack([df["d_z"], df["d_z"] * df["batch"], df["batch"] * df["k"]], 1).astype(float)
    coef = np.linalg.lstsq(a, df["ms"].to_numpy(), rcond=None)[0]
    df["fit_ms"] = a @ coef
    return df, coef


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        cpu = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), cpu)
    except (OSError, subprocess.SubprocessError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"nproc={os.cpu_count()}, CPU {cpu}, torch {torch.__version__}, load average at start {load:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=128, help="input dimension (EnCodec's d_codec is 128)")
    ap.add_argument("--n", type=int, default=4096, help="training rows")
    ap.add_argument("--epochs", type=int, default=2, help="epochs (long configurations: 2.5x)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--threads", default="1,2", help="torch intra-op thread counts to try")
    ap.add_argument("--sources", default="utterance,frames")
    ap.add_argument("--repeats", type=int, default=2, help="repeats per schedule (order alternates)")
    ap.add_argument("--step-model", default="", help="batch sizes: time Member.step only and fit the step formula")
    args = ap.parse_args()
    if args.step_model:
        torch.set_num_threads(1)
        print(machine())
        df, (a, b, c) = step_model([int(v) for v in args.step_model.split(",")], args.d)
        print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print(f"ms/step ~= d_z * ({1e3 * a:.2f}e-3 + {1e6 * b:.2f}e-6 * batch) + {1e6 * c:.2f}e-6 * batch * k   (1 thread)")
        return

    device = torch.device("cpu")
    configs = paper_grid(epochs=args.epochs, long_epochs=int(round(2.5 * args.epochs)))
    train = TrainConfig(lr=1e-4, batch_size=args.batch_size)
    print(machine())
    print(f"16 configurations (q 2,5,10,20 x s 0.5,0.25,0.1,0.05), d={args.d}, n={args.n}, "
          f"batch {args.batch_size}, epochs {args.epochs} (long {configs[2].epochs})")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = {}
        for name in args.sources.split(","):
            if name == "utterance":
                x = np.random.default_rng(0).standard_normal((args.n, args.d)).astype(np.float32)
                sources[name] = ArraySource(x)
            elif name == "frames":
                st = make_store(Path(tmp) / "st", args.n, args.d)
                sources[name] = StoreSource(st, st.reprs("cumulative:8")[0], np.arange(st.n_frames))
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            for name, src in sources.items():
                run("concurrent", src, configs[:1], train, device)  # warm-up: allocator, kernels, page cache
                res: dict[str, list[float]] = {"concurrent": [], "sequential": []}
                for rep in range(args.repeats):
                    # alternate the order so drifting machine load does not favour one schedule
                    order = ("concurrent", "sequential") if rep % 2 == 0 else ("sequential", "concurrent")
                    for schedule in order:
                        wall, cpu, data = run(schedule, src, configs, train, device)
                        res[schedule].append((wall, cpu))
                        rows.append({"threads": threads, "source": name, "schedule": schedule, "repeat": rep,
                                     "wall_s": wall, "cpu_s": cpu, "data_s": data})
                        print(f"threads={threads} {name:9s} {schedule:10s} wall {wall:7.2f} s  cpu {cpu:7.2f} s  "
                              f"(data path {data:6.2f} s wall)")
                w = np.median([r[0] for r in res["sequential"]]) / np.median([r[0] for r in res["concurrent"]])
                c = np.median([r[1] for r in res["sequential"]]) / np.median([r[1] for r in res["concurrent"]])
                print(f"threads={threads} {name:9s} median sequential / concurrent: wall {w:.2f}x, cpu {c:.2f}x")
    df = pd.DataFrame(rows)
    print()
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    torch.set_num_threads(1)
    bd = step_breakdown(configs, args.d, args.batch_size, train)
    print()
    print("CPU ms per training step (1 thread), by phase:")
    print(bd.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    share = bd.groupby("q", sort=False)["total_ms"].sum() / bd["total_ms"].sum()
    print("share of one sweep step by q:", ", ".join(f"q={q}: {100 * v:.0f}%" for q, v in share.items()))
    phases = bd.drop(columns=["q", "s", "d_z", "k", "total_ms"]).sum() / bd["total_ms"].sum()
    print("share by phase:", ", ".join(f"{p}: {100 * v:.0f}%" for p, v in phases.items()))


if __name__ == "__main__":
    main()
