"""The ``sae`` analysis itself (registered in ``__init__``): TopK SAEs on codec representations
(Wang et al. 2026).

For every store: a q × s sweep of TopK SAEs trained concurrently on the SAE
speakers, then logistic regression on z, z_pos and z_mag (classifier speakers)
scored on held-out test speakers, ΔF1 against the same classifier on u,
activation density, dead latents, FVU and L0; a feature browser per SAE; and
published-vs-ours tables when a store's codec is one the paper reports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ...config import to_dict
from ...errors import CodeclensError
from ...util.atomic import atomic_path, write_json
from ...util.provenance import config_hash
from ..base import AnalysisResult, Artifact
from ..club import torch_threads
from . import figures, metrics
from .browser import write_browser
from .classify import FEATURES, delta_f1, fit_score, macro_f1
from .config import SAEStudyConfig
from .data import TaskData, build_task
from .io import load_sae, read_meta, save_sae
from .model import TopKSAE
from .published import SOURCE, bitrate_kbps, codec_family, published_key, table
from .sweep import ArraySource, SAEConfig, StoreSource, train_sweep


def _nearest(values: Sequence[float], v: float) -> float:
    return float(min(values, key=lambda x: abs(np.log(x) - np.log(v))))


def _rows_hash(rows: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest()[:16]


@torch.no_grad()
def encode_np(sae: TopKSAE, x: np.ndarray, device: torch.device, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Codes z and reconstructions û of rows x, in chunks."""
    zs, us = [], []
    for a in range(0, len(x), chunk):
        u_hat, z = sae(torch.as_tensor(np.asarray(x[a : a + chunk], np.float32), device=device))
        zs.append(z.cpu().numpy())
        us.append(u_hat.cpu().numpy())
    d_z, d = sae.shape.d_z, sae.shape.d
    return (np.concatenate(zs) if zs else np.zeros((0, d_z), np.float32),
            np.concatenate(us) if us else np.zeros((0, d), np.float32))


@dataclasses.dataclass
class _StoreOut:
    label: str
    task: TaskData
    saes: dict
    results: list
    history: list
    reference: dict
    density: pd.DataFrame
    label_latents: pd.DataFrame


class SAERunner:
    """Runs the study for :class:`codeclens.analyses.sae.SAEAnalysis`."""

    name = "sae"
    title = "Sparse autoencoders: ΔF1, position vs magnitude, activation density"

    def run(self, stores: Sequence[Any], cfg: SAEStudyConfig, out: Path, progress: bool = True) -> AnalysisResult:
        with torch_threads(cfg.threads):
            return self._run(stores, cfg, out, progress)

    def _run(self, stores: Sequence[Any], cfg: SAEStudyConfig, out: Path, progress: bool) -> AnalysisResult:
        from ...util.device import resolve_device

        if not stores:
            raise CodeclensError("sae: no stores given")
        device = resolve_device(None if cfg.device == "auto" else cfg.device)
        out = Path(out)
        names = _unique_names([s.name for s in stores])
        outs = [self._run_store(st, nm, cfg, out / "stores" / nm, device, progress) for st, nm in zip(stores, names)]
        return self._collect(stores, outs, cfg, out)

    # -- one store -------------------------------------------------------------
    def _run_store(self, store, name: str, cfg: SAEStudyConfig, sdir: Path, device, progress: bool) -> _StoreOut:
        rep = store._one(cfg.repr or f"mean(cumulative:{store.n_layers})")
        task = build_task(
            store, rep, cfg.label, cfg.classes, cfg.split_column, cfg.sae_split, cfg.clf_split, cfg.test_split,
            cfg.monitor_fraction, cfg.max_rows, cfg.seed, cfg.speaker_fractions, cfg.label_map,
        )
        roles = task.roles
        train = cfg.train_config()
        base_fp = {
            "store": str(Path(store.path).resolve()), "n_frames": store.n_frames, "repr": rep.name,
            "rows": _rows_hash(roles["sae"]), "train": to_dict(train), "seed": cfg.seed,
        }
        saes: dict[str, tuple[TopKSAE, dict]] = {}
        pending = []
        for c in cfg.grid():
            fp = config_hash({**base_fp, "q": c.q, "s": c.s, "epochs": c.epochs})
            d = sdir / "saes" / c.tag
            try:
                meta = read_meta(d)
                if meta.get("fingerprint") == fp:
                    saes[c.tag] = load_sae(d, device)
                    continue
            except CodeclensError:
                pass
            pending.append((c, fp))
        if pending:
            source = (ArraySource(task.values(roles["sae"])) if not task.frame_level
                      else StoreSource(store, rep, roles["sae"]))
            mon_rows = roles["monitor"]
            if len(mon_rows) > 20000:
                mon_rows = np.sort(np.random.default_rng(cfg.seed).choice(mon_rows, 20000, replace=False))
            monitor = task.values(mon_rows) if len(mon_rows) else None
            members = train_sweep([c for c, _ in pending], source, train, cfg.seed, device, monitor, progress)
            for (c, fp), m in zip(pending, members):
                meta = {
                    "fingerprint": fp, "q": c.q, "s": c.s, "epochs": c.epochs, "store": store.name,
                    "store_path": str(store.path), "codec": store.codec.get("spec"), "repr": rep.name,
                    "label": cfg.label, "train": to_dict(train), "seed": cfg.seed, "init_seed": c.seed(cfg.seed),
                    "n_train": int(source.n), "history": m.history,
                }
                save_sae(sdir / "saes" / c.tag, m.sae, meta)
                saes[c.tag] = (m.sae, read_meta(sdir / "saes" / c.tag))

        y = task.y
        x_clf, x_test = task.values(roles["clf"]), task.values(roles["test"])
        y_clf, y_test = y[roles["clf"]], y[roles["test"]]
        clf_cfg = cfg.classifier()
        labels = np.array(task.classes)
        f1_ref = fit_score(x_clf, y_clf, x_test, y_test, clf_cfg)
        vals, counts = np.unique(y_clf, return_counts=True)
        majority = macro_f1(y_test, np.full(len(y_test), vals[np.argmax(counts)]), labels)
        reference = {
            "store": name, "codec": store.codec.get("spec"), "repr": rep.name, "label": cfg.label,
            "classes": ",".join(labels), "d": int(x_test.shape[1]), "f1_ref": f1_ref, "majority_f1": majority,
            **{f"n_{r}": int(len(roles[r])) for r in roles},
            **{f"speakers_{r}": int(len(set(task.speaker[roles[r]]))) for r in roles},
        }
        eval_fp = config_hash({"label": cfg.label, "classes": list(cfg.classes), "map": list(cfg.label_map),
                               "clf": to_dict(clf_cfg), "top_latents": cfg.top_latents,
                               "roles": {r: _rows_hash(v) for r, v in roles.items()}})
        results, history, dens_rows, label_latents = [], [], [], []
        dq = _nearest(cfg.q, cfg.density_q)
        ds = _nearest(cfg.s, cfg.density_s)
        for c in cfg.grid():
            sae, meta = saes[c.tag]
            for h in meta.get("history", []):
                history.append({"store": name, "config": c.tag, **h})
            z_test, u_hat = encode_np(sae, x_test, device)
            cache = sdir / "saes" / c.tag / f"eval_{eval_fp}.json"
            if cache.is_file():
                ev = json.loads(cache.read_text())
            else:
                z_clf, _ = encode_np(sae, x_clf, device)
                r = delta_f1(z_clf, y_clf, z_test, y_test, sae.k, f1_ref, clf_cfg)
                w = r.weights.get("z", np.zeros(0))
                top = [int(j) for j in np.argsort(-w, kind="stable")[: cfg.top_latents] if w[j] > 0]
                ev = {"f1": r.f1, "f1_ref": f1_ref, "top_latents": [[j, float(w[j])] for j in top]}
                write_json(cache, ev)
            dens_test = metrics.latent_density(z_test)
            for rank, (j, wj) in enumerate(ev.get("top_latents", [])):
                label_latents.append({"store": name, "q": c.q, "s": c.s, "rank": rank + 1, "latent": j,
                                      "weight": wj, "density_test": float(dens_test[j])})
            common = {
                "store": name, "codec": store.codec.get("spec"), "repr": rep.name, "label": cfg.label,
                "q": c.q, "s": c.s, "d": sae.shape.d, "d_z": sae.shape.d_z, "k": sae.k, "epochs": c.epochs,
                "fvu": metrics.fvu(x_test, u_hat), "l0": metrics.l0(z_test),
                "dead_fraction": metrics.dead_fraction(z_test), "density_gini": metrics.density_gini(z_test),
                "monitor_mse": (meta.get("history") or [{}])[-1].get("monitor_mse", np.nan),
                "f1_ref": ev["f1_ref"],
            }
            for feat in FEATURES:
                results.append({**common, "feature": feat, "f1": ev["f1"][feat], "delta_f1": ev["f1"][feat] - ev["f1_ref"]})
            if np.isclose(c.q, dq) and np.isclose(c.s, ds):
                g = metrics.grouped_density(z_test, cfg.density_groups)
                for i, v in enumerate(g):
                    dens_rows.append({"store": name, "q": c.q, "s": c.s, "group": i, "density": v,
                                      "uniform": sae.k / sae.shape.d_z})
            if cfg.browser:
                first = [j for j, _ in ev.get("top_latents", [])]
                self._browser(task, sae, meta, c, name, sdir, device, cfg, first)
        return _StoreOut(name, task, saes, results, history, reference, pd.DataFrame(dens_rows),
                         pd.DataFrame(label_latents))

    def _browser(self, task: TaskData, sae, meta, c: SAEConfig, name: str, sdir: Path, device, cfg,
                 first: list[int]) -> None:
        store = task.store
        if task.frame_level:
            rows = np.sort(np.concatenate([task.roles["clf"], task.roles["test"]]))
            utt = store.frame_utt[rows]
            times = store.frames["time"].to_numpy()[rows]
        else:
            rows = np.unique(np.concatenate(list(task.roles.values())))
            utt, times = rows, None
        u = store.utterances
        info = pd.DataFrame({
            "id": u["id"].astype(str).to_numpy()[utt],
            "speaker": u["speaker"].astype(str).to_numpy()[utt],
            "label": task.y[rows],
            "path": u["path"].fillna("").astype(str).to_numpy()[utt] if "path" in u.columns else "",
        })
        start = u["start"].to_numpy(dtype=float)[utt] if "start" in u.columns else np.zeros(len(utt))
        start = np.nan_to_num(start, nan=0.0)
        if times is not None:
            info["time"] = times
            info["clip_start"] = start + times - 0.5
            info["clip_end"] = start + times + 0.5
        else:
            end = u["end"].to_numpy(dtype=float)[utt] if "end" in u.columns else np.full(len(utt), np.nan)
            info["clip_start"] = np.where(np.isfinite(end), start, np.nan)
            info["clip_end"] = end
        z, _ = encode_np(sae, task.values(rows), device)
        head = {"store": name, "codec": store.codec.get("spec"), "representation": task.rep.name,
                "label": task.label, "q": c.q, "s": c.s, "d": sae.shape.d, "d_z": sae.shape.d_z, "k": sae.k,
                "epochs": c.epochs, "rows": len(rows)}
        write_browser(sdir / "browser" / f"{c.tag}.html", f"SAE {c.tag} on {name}", head, z, info,
                      cfg.browser_latents, cfg.browser_top, first=first)

    # -- all stores ------------------------------------------------------------
    def _collect(self, stores, outs: list[_StoreOut], cfg: SAEStudyConfig, out: Path) -> AnalysisResult:
        res = pd.DataFrame([r for o in outs for r in o.results])
        ref = pd.DataFrame([o.reference for o in outs])
        hist = pd.DataFrame([h for o in outs for h in o.history])
        dens = pd.concat([o.density for o in outs], ignore_index=True)
        arts: list[Artifact] = []

        def table_art(df: pd.DataFrame, fname: str, caption: str, group: str = "") -> None:
            with atomic_path(out / fname, ".csv") as tmp:
                df.to_csv(tmp, index=False)
            arts.append(Artifact(fname, caption, "table", group))

        ts = _nearest(cfg.s, cfg.table_s)
        chance = {o.label: o.reference["majority_f1"] - o.reference["f1_ref"] for o in outs}
        p = figures.delta_f1_vs_s(res, chance, out / "delta_f1_vs_s.png")
        arts.append(Artifact(p.name, "ΔF1 (%) of z against sparsity s, one panel per latent ratio q, one line per "
                             "store (cf. Wang et al. Fig. 2/3); dotted: majority-class predictor.", "figure"))
        p = figures.position_magnitude(res, ts, out / "position_magnitude.png")
        arts.append(Artifact(p.name, f"ΔF1 (%) of z, position-only and magnitude-only features at s = {ts:g} "
                             "(cf. Wang et al. Table 2).", "figure"))
        if len(dens):
            p = figures.density(dens, out / "density.png")
            arts.append(Artifact(p.name, f"Activation density over {cfg.density_groups} ordered latent groups on "
                                 f"the test set (q = {dens['q'].iloc[0]:g}, s = {dens['s'].iloc[0]:g}; cf. Wang et al. Fig. 4).",
                                 "figure"))
        if len(hist):
            p = figures.training_curves(hist, out / "training.png")
            arts.append(Artifact(p.name, "SAE reconstruction loss ||u - û||² during training, on the "
                                 "monitor speakers (on the training rows when there are none).", "figure"))

        table_art(ref, "reference_f1.csv", "Reference macro-F1 of logistic regression on u (cf. Wang et al. "
                  "Table 1), majority-class F1, rows and speakers per role.")
        table_art(res, "results.csv", "All configurations: F1 and ΔF1 of z / position / magnitude, FVU, L0, "
                  "dead-latent fraction (test set).")
        wide = _posmag_table(res, ts)
        table_art(wide, f"position_magnitude_s{ts:g}.csv", f"ΔF1 (%) at s = {ts:g}: z, position, magnitude by q.")
        if len(dens):
            table_art(dens, "density.csv", "Activation density per ordered latent group.")
        lat = pd.concat([o.label_latents for o in outs], ignore_index=True)
        if len(lat):
            table_art(lat, "label_latents.csv", f"Latents that carry '{cfg.label}': the largest |coefficients| of "
                      "the L1 classifier on standardized z, per SAE (shown first in the feature browsers).")
        br = _bitrate_table(res, [s.codec.get("spec", "") for s in stores], [o.label for o in outs], cfg.s)
        if br is not None:
            table_art(br, "bitrate.csv", "ΔF1 (%) of z for stores of one codec at several bitrates "
                      "(cf. Wang et al. Table 3).")
            p = figures.bitrate(br, out / "bitrate.png")
            arts.append(Artifact(p.name, "ΔF1 (%) of z against bitrate, one line per q (cf. Wang et al. Table 3).",
                                 "figure"))
        published = self._published(res, ref, outs, cfg, ts, out)
        for o in outs:
            if cfg.browser:
                for c in cfg.grid():
                    arts.append(Artifact(f"stores/{o.label}/browser/{c.tag}.html",
                                         f"Feature browser, {o.label}, q={c.q:g}, s={c.s:g}", "page", o.label))
        return AnalysisResult(self.name, self.title, tuple(arts), _summary(res, ref, ts), tuple(published))

    def _published(self, res, ref, outs, cfg, ts, out: Path) -> list[Artifact]:
        setting = cfg.published_setting
        keys = {o.label: published_key(o.reference["codec"] or "") for o in outs}
        codecs = {o.label: o.reference["codec"] for o in outs}
        arts = []
        t1 = table("table1")
        rows = []
        for o in outs:
            k = keys[o.label]
            hit = t1[(t1["codec"] == k) & (t1["setting"] == setting)]
            if k and len(hit):
                rows.append({"codec": k, "setting": setting, "quantity": "reference macro-F1 (%) on u",
                             "published": float(hit["macro_f1_pct"].iloc[0]),
                             "ours": round(100 * o.reference["f1_ref"], 2), "ours_store": o.label,
                             "ours_label": f"{cfg.label} ({o.reference['classes']})",
                             "source": f"{SOURCE}, Table 1"})
        if rows:
            arts.append(_write_pub(out, "published_table1.csv", rows,
                                   "Published vs ours: reference macro-F1 on u (Wang et al. Table 1).", codecs))
        t2 = table("table2")
        rows = []
        if setting == "us_vs_uk":
            for o in outs:
                k = keys[o.label]
                for _, pr in t2[t2["codec"] == k].iterrows():
                    for q in (2, 5, 10, 20):
                        ours = res[(res["store"] == o.label) & np.isclose(res["q"], q) & np.isclose(res["s"], 0.05)
                                   & (res["feature"] == pr["feature"])]
                        rows.append({"codec": k, "setting": setting, "feature": pr["feature"], "q": q, "s": 0.05,
                                     "published": float(pr[f"q{q}"]),
                                     "ours": round(100 * float(ours["delta_f1"].iloc[0]), 2) if len(ours) else np.nan,
                                     "ours_store": o.label, "source": f"{SOURCE}, Table 2 (ΔF1 %, US vs UK)"})
        if rows:
            arts.append(_write_pub(out, "published_table2.csv", rows,
                                   "Published vs ours: ΔF1 (%) of z / position / magnitude at s = 5% (Wang et al. Table 2).",
                                   codecs))
        t3 = table("table3")
        rows = []
        if setting == "us_vs_uk":
            for o in outs:
                k = keys[o.label]
                if not (k and k.startswith("encodec_")):
                    continue
                for _, pr in t3.iterrows():
                    for s_pct in (5, 10):
                        ours = res[(res["store"] == o.label) & np.isclose(res["q"], pr["q"])
                                   & np.isclose(res["s"], s_pct / 100) & (res["feature"] == "z")]
                        rows.append({"codec": k, "setting": setting, "q": int(pr["q"]), "s": s_pct / 100,
                                     "published": float(pr[f"{k}_s{s_pct}"]),
                                     "ours": round(100 * float(ours["delta_f1"].iloc[0]), 2) if len(ours) else np.nan,
                                     "ours_store": o.label, "source": f"{SOURCE}, Table 3 (ΔF1 %, US vs UK)"})
        if rows:
            arts.append(_write_pub(out, "published_table3.csv", rows,
                                   "Published vs ours: EnCodec ΔF1 (%) by bitrate (Wang et al. Table 3).", codecs))
        return arts


def _write_pub(out: Path, fname: str, rows: list[dict], caption: str, codecs: dict[str, str]) -> Artifact:
    df = pd.DataFrame(rows)
    df.insert(df.columns.get_loc("ours_store") + 1, "ours_codec", df["ours_store"].map(codecs))
    df["note"] = [
        ("ours: RANDOM-WEIGHT control codec (random_init), not the trained model; " if "random_init" in str(c) else "ours: ")
        + "our corpus, label and splits; published: Vox-Profile" for c in df["ours_codec"]
    ]
    with atomic_path(out / fname, ".csv") as tmp:
        df.to_csv(tmp, index=False)
    return Artifact(fname, caption, "table")


def _unique_names(names: list[str]) -> list[str]:
    out, seen = [], {}
    for n in names:
        safe = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in n) or "store"
        seen[safe] = seen.get(safe, 0) + 1
        out.append(safe if seen[safe] == 1 else f"{safe}-{seen[safe]}")
    return out


def _posmag_table(res: pd.DataFrame, s: float) -> pd.DataFrame:
    d = res[np.isclose(res["s"], s)].copy()
    d["delta_f1_pct"] = (100 * d["delta_f1"]).round(2)
    wide = d.pivot_table(index=["store", "feature"], columns="q", values="delta_f1_pct", sort=False)
    wide.columns = [f"q{q:g}" for q in wide.columns]
    wide = wide.reset_index()
    wide["feature"] = pd.Categorical(wide["feature"], list(FEATURES))
    return wide.sort_values(["store", "feature"], kind="stable").reset_index(drop=True)


def _bitrate_table(res: pd.DataFrame, specs: list[str], labels: list[str], grid_s) -> pd.DataFrame | None:
    fam: dict[str, list[tuple[float, str]]] = {}
    for spec, lab in zip(specs, labels):
        b = bitrate_kbps(spec)
        if b is not None:
            fam.setdefault(codec_family(spec), []).append((b, lab))
    groups = {f: sorted(v) for f, v in fam.items() if len({b for b, _ in v}) > 1}
    if not groups:
        return None
    ss = [s for s in grid_s if np.isclose(s, 0.05) or np.isclose(s, 0.10)] or list(grid_s)
    tables = []
    for f, members in groups.items():
        z = res[res["feature"] == "z"]
        wide = pd.DataFrame({"family": f, "q": sorted(z["q"].unique())})
        for b, lab in members:
            for s in sorted(ss):
                vals = z[(z["store"] == lab) & np.isclose(z["s"], s)].set_index("q")["delta_f1"]
                wide[f"{b:g}kbps_s{100 * s:g}"] = [round(100 * vals.get(q, np.nan), 2) for q in wide["q"]]
        tables.append(wide)
    return pd.concat(tables, ignore_index=True)


def _summary(res: pd.DataFrame, ref: pd.DataFrame, s: float) -> str:
    parts = []
    for _, r in ref.iterrows():
        d = res[(res["store"] == r["store"]) & np.isclose(res["s"], s)]
        mean = d.groupby("feature")["delta_f1"].mean()
        allz = res[(res["store"] == r["store"]) & (res["feature"] == "z")]
        best = allz.loc[allz["delta_f1"].idxmax()]
        which = "magnitude" if mean.get("magnitude", -9) > mean.get("position", -9) else "position"
        parts.append(
            f"{r['store']}: reference macro-F1 on u {100 * r['f1_ref']:.1f}% (majority class "
            f"{100 * r['majority_f1']:.1f}%); at s={s:g} mean ΔF1 z {100 * mean.get('z', np.nan):+.1f}, "
            f"position {100 * mean.get('position', np.nan):+.1f}, magnitude {100 * mean.get('magnitude', np.nan):+.1f} "
            f"points ({which} carries more of the label); best z configuration q={best['q']:g}, s={best['s']:g} "
            f"(ΔF1 {100 * best['delta_f1']:+.1f}); test FVU {res[res['store'] == r['store']]['fvu'].min():.3f}"
            f"–{res[res['store'] == r['store']]['fvu'].max():.3f}."
        )
        bad = allz[allz["fvu"] > 1]
        if len(bad):
            parts.append(
                f"Warning: {len(bad)} of {len(allz)} SAEs on {r['store']} reconstruct worse than the mean (FVU > 1): "
                f"they are undertrained; raise --lr or --epochs, lower --batch-size, or use --normalize."
            )
    return " ".join(parts)
