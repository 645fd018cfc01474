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
from . import figures, metrics, stats
from .baselines import BASELINES, PCA, random_dictionary, shuffle_by_speaker
from .browser import summarize, write_browser
from .classify import FEATURES, L1Model, code_features, fit_predict, macro_f1
from .config import SAEStudyConfig
from .data import TaskData, build_task
from .io import load_sae, read_meta, save_sae
from .model import TopKSAE
from .published import SOURCE, bitrate_kbps, codec_family, paper_group, published_match, table
from .sweep import ArraySource, SAEConfig, StoreSource, sample_rows, train_sweep


def _nearest(values: Sequence[float], v: float) -> float:
    return float(min(values, key=lambda x: abs(np.log(x) - np.log(v))))


def _nanmean(v) -> float:
    v = np.asarray(v, float)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


def _ci(name: str, samples: np.ndarray) -> dict:
    lo, hi = stats.interval(samples)
    return {f"{name}_low": lo, f"{name}_high": hi}


def _rows_hash(rows: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest()[:16]


EVAL_ROWS = 2048
"""Rows encoded at a time where codes are only summarised or predicted (test metrics, browser pages,
validation and test predictions): ~20 MB of codes at d_z = 2560."""


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


def _check_paper_groups(store) -> None:
    """Refuse, with the way out, a store whose accents the paper's grouping puts all in one group
    (e.g. accents it does not know: every one is then non-US-UK)."""
    if "accent" not in store.utterances.columns:
        return  # build_task says which columns there are
    acc = sorted({str(a) for a in store.utterances["accent"].dropna().unique()} - {""})
    groups = {g for g in map(paper_group, acc) if g}
    if acc and len(groups) < 2:
        raise CodeclensError(
            f"{store.path}: the paper's accent grouping puts every accent here ({', '.join(acc[:6])}"
            f"{', ...' if len(acc) > 6 else ''}) in {', '.join(sorted(groups)) or 'no group'}: one class; "
            f"use --grouping none to classify the accents as stored, or --label-map")


def _code_stats(sae: TopKSAE, x: np.ndarray, device: torch.device) -> metrics.CodeStats:
    """FVU, L0 and latent densities of ``sae`` on rows x, encoded and accumulated chunk by chunk."""
    st = metrics.CodeStats(sae.shape.d_z)
    for a in range(0, len(x), EVAL_ROWS):
        z, u_hat = encode_np(sae, x[a : a + EVAL_ROWS], device)
        st.add(x[a : a + EVAL_ROWS], u_hat, z)
    return st


@dataclasses.dataclass
class _StoreOut:
    label: str
    task: TaskData
    results: list
    contrasts: list
    history: list
    reference: dict
    density: pd.DataFrame
    label_latents: pd.DataFrame
    notes: list
    slug: str = ""
    """Folder of the store's outputs under ``stores/`` (the label made file-name safe)."""


def select_configuration(res: pd.DataFrame) -> pd.Series | None:
    """The configuration whose z has the highest *validation* macro-F1 (mean over seeds), first in
    grid order on ties; None without validation scores. Test scores are never looked at."""
    z = res[(res["feature"] == "z") & res["f1_val"].notna()]
    if not len(z):
        return None
    return z.loc[z["f1_val"].idxmax()]


class _Scorer:
    """Point F1 and speaker-bootstrap replicates of predictions on one store's test rows."""

    def __init__(self, task: TaskData, classes: list[str], n_boot: int, seed: int):
        self.classes = classes
        test = task.roles["test"]
        self.y_test, self.spk = task.y[test], task.speaker[test]
        self.speakers = sorted(set(self.spk))
        self.w = stats.speaker_weights(len(self.speakers), n_boot, seed)
        self.y_val = task.y[task.roles["monitor"]]
        self.seed = seed

    def test(self, pred: np.ndarray) -> tuple[float, np.ndarray]:
        c = stats.speaker_counts(self.y_test, pred, self.spk, self.classes, self.speakers)
        return float(stats.macro_f1_from_counts(c.sum(0))), stats.replicate_f1(c, self.w)

    def val(self, pred: np.ndarray) -> float:
        return macro_f1(self.y_val, pred, np.array(self.classes)) if len(self.y_val) else float("nan")

    def series(self, preds: list[list[tuple[np.ndarray, np.ndarray]]]) -> dict:
        """``preds[sae_seed][clf_seed] = (val_pred, test_pred)`` -> F1 (mean over seeds), validation F1,
        SD over SAE seeds and the ``[n_boot]`` replicates (speakers and SAE seeds resampled)."""
        f1s, vals, reps = [], [], []
        for per_clf in preds:
            sc = [self.test(t) for _, t in per_clf]
            f1s.append(np.mean([f for f, _ in sc]))
            reps.append(np.mean([r for _, r in sc], axis=0))
            vals.append(np.mean([self.val(v) for v, _ in per_clf]))
        return {"f1": float(np.mean(f1s)), "f1_val": float(np.mean(vals)),
                "f1_seed_sd": float(np.std(f1s, ddof=1)) if len(f1s) > 1 else 0.0,
                "reps": stats.seed_mean_replicates(np.array(reps), self.seed)}


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
        # Tables, figures and the report show each store's display name; its folder gets a safe slug.
        slugs = _unique_names([s.name for s in stores])
        labels = _unique_labels([s.name for s in stores])
        outs = [self._run_store(st, lb, cfg, out / "stores" / sl, device, progress)
                for st, lb, sl in zip(stores, labels, slugs)]
        return self._collect(stores, outs, cfg, out)

    # -- one store -------------------------------------------------------------
    def _train(self, task: TaskData, cfg: SAEStudyConfig, grid, train, sdir: Path, device, progress: bool) -> dict:
        """(tag, seed) -> (SAE, meta), loading every SAE whose fingerprint matches and training the rest."""
        store, roles, rep = task.store, task.roles, task.rep
        base_fp = {"store": store.fingerprint, "repr": rep.name, "rows": _rows_hash(roles["sae"]),
                   "train": to_dict(train)}
        saes: dict = {}
        source = monitor = None
        for seed in range(cfg.seed, cfg.seed + cfg.sae_seeds):
            pending = []
            for c in grid:
                fp = config_hash({**base_fp, "q": c.q, "s": c.s, "epochs": c.epochs, "seed": seed})
                d = sdir / "saes" / c.tag / f"seed{seed}"
                try:
                    if read_meta(d).get("fingerprint") == fp:
                        saes[c.tag, seed] = load_sae(d, device)
                        continue
                except CodeclensError:
                    pass
                pending.append((c, fp))
            if not pending:
                continue
            if source is None:
                source = (ArraySource(task.values(roles["sae"])) if not task.frame_level
                          else StoreSource(store, rep, roles["sae"]))
                mon_rows = roles["monitor"]
                if len(mon_rows) > 20000:
                    mon_rows = np.sort(np.random.default_rng(cfg.seed).choice(mon_rows, 20000, replace=False))
                monitor = task.values(mon_rows) if len(mon_rows) else None
            members = train_sweep([c for c, _ in pending], source, train, seed, device, monitor, progress)
            for (c, fp), m in zip(pending, members):
                meta = {
                    "fingerprint": fp, "q": c.q, "s": c.s, "epochs": c.epochs, "store": store.name,
                    "store_path": str(store.path), "store_fingerprint": store.fingerprint,
                    "codec": store.codec.get("spec"), "repr": rep.name, "label": cfg.label, "train": to_dict(train),
                    "aux_k": m.aux_k, "seed": seed, "init_seed": c.seed(seed), "n_train": int(source.n),
                    "dead_fraction_train": m.dead_fraction, "history": m.history,
                }
                d = sdir / "saes" / c.tag / f"seed{seed}"
                save_sae(d, m.sae, meta)
                saes[c.tag, seed] = (m.sae, read_meta(d))
        return saes

    def _run_store(self, store, name: str, cfg: SAEStudyConfig, sdir: Path, device, progress: bool) -> _StoreOut:
        paper_repr = f"mean(cumulative:{store.n_layers})"
        rep = store._one(cfg.repr or paper_repr)
        grouped = cfg.grouping == "paper" and cfg.label == "accent" and not cfg.label_map
        if grouped:
            _check_paper_groups(store)
        task = build_task(
            store, rep, cfg.label, cfg.classes, cfg.split_column, cfg.sae_split, cfg.clf_split, cfg.test_split,
            cfg.monitor_fraction, cfg.max_rows, cfg.seed, cfg.speaker_fractions, cfg.label_map,
            group=paper_group if grouped else None,
        )
        roles = task.roles
        train, epochs, long_epochs = cfg.schedule(len(roles["sae"]))
        grid = cfg.grid(epochs, long_epochs)
        saes = self._train(task, cfg, grid, train, sdir, device, progress)
        sae_seeds = list(range(cfg.seed, cfg.seed + cfg.sae_seeds))
        clf_seeds = list(range(cfg.seed, cfg.seed + cfg.clf_seeds))

        y = task.y
        x_clf, x_val, x_test = (task.values(roles[r]) for r in ("clf", "monitor", "test"))
        y_clf = y[roles["clf"]]
        classes = sorted(set(y_clf) | set(y[roles["test"]]) | set(y[roles["monitor"]]))
        scorer = _Scorer(task, classes, cfg.n_boot, cfg.seed)

        def fit(xtr, ytr, xv, xt, seed):
            (pv, pt), w = fit_predict(xtr, ytr, [xv, xt], cfg.classifier(seed))
            return (pv, pt), w

        ref = scorer.series([[fit(x_clf, y_clf, x_val, x_test, cs)[0] for cs in clf_seeds]])
        vals, counts = np.unique(y_clf, return_counts=True)
        maj = np.full(len(x_test), vals[np.argmax(counts)], dtype=object)
        majority = scorer.test(maj)
        reference = {
            "store": name, "codec": store.codec.get("spec"), "repr": rep.name, "label": cfg.label,
            "classes": ",".join(classes), "grouping": "paper" if grouped else ("label_map" if cfg.label_map else "none"),
            "d": int(x_test.shape[1]), "f1_ref": ref["f1"], **_ci("f1_ref", ref["reps"]), "f1_ref_val": ref["f1_val"],
            "majority_f1": majority[0], **{f"n_{r}": int(len(roles[r])) for r in roles},
            **{f"speakers_{r}": int(len(set(task.speaker[roles[r]]))) for r in roles},
            "batch_size": train.batch_size, "lr": train.lr, "epochs": epochs, "long_epochs": long_epochs,
            "normalize": train.normalize, "sae_seeds": cfg.sae_seeds, "clf_seeds": cfg.clf_seeds,
            "store_fingerprint": store.fingerprint, "relabelled": task.relabelled,
        }
        key, setting, why = published_match(store.codec.get("spec") or "", classes, cfg.label, rep.name, paper_repr,
                                            cfg.published_setting)
        reference.update(paper_codec=key or "", paper_setting=setting or "", published_reason=why)
        notes = []
        if (cfg.label_map or cfg.classes or grouped) and not task.relabelled:
            notes.append(f"{name}: the label map / grouping / classes change no label here (the task equals the "
                         f"labels as stored: {', '.join(classes)}); an analysis without them duplicates this one.")
        eval_fp = config_hash({"store": store.fingerprint, "label": cfg.label, "classes": list(cfg.classes),
                               "map": list(cfg.label_map), "grouped": grouped, "clf": to_dict(cfg.classifier()),
                               "clf_seeds": clf_seeds, "top_latents": cfg.top_latents,
                               "roles": {r: _rows_hash(v) for r, v in roles.items()}})
        pca = PCA(sample_rows(ArraySource(task.values(roles["sae"])) if not task.frame_level
                              else StoreSource(store, rep, roles["sae"]), 20000, cfg.seed))
        pca_preds: dict[int, list] = {}
        results, contrasts, history, dens_rows, label_latents = [], [], [], [], []
        dq = _nearest(cfg.q, cfg.density_q)
        ds = _nearest(cfg.s, cfg.density_s)
        ci = {c: i for i, c in enumerate(classes)}
        cls = np.array(classes, dtype=object)
        for c in grid:
            per_seed = {f: [] for f in FEATURES + BASELINES}
            mets = []
            for seed in sae_seeds:
                sae, meta = saes[c.tag, seed]
                for h in meta.get("history", []):
                    history.append({"store": name, "config": c.tag, "seed": seed, **h})
                st = _code_stats(sae, x_test, device)
                cache = sdir / "saes" / c.tag / f"seed{seed}" / f"eval_{eval_fp}.json"
                if cache.is_file():
                    ev = json.loads(cache.read_text())
                else:
                    ev = self._evaluate(sae, c, seed, task, x_clf, x_val, x_test, y_clf, clf_seeds, cfg, device, ci)
                    write_json(cache, ev)
                for f, runs in ev["preds"].items():
                    per_seed[f].append([(cls[np.asarray(v, int)], cls[np.asarray(t, int)]) for v, t in runs])
                mets.append({"fvu": st.fvu, "l0": st.l0, "dead_fraction": st.dead_fraction,
                             "dead_fraction_train": meta.get("dead_fraction_train", np.nan),
                             "density_gini": st.density_gini,
                             "monitor_mse": (meta.get("history") or [{}])[-1].get("monitor_mse", np.nan)})
                if seed != cfg.seed:
                    continue
                dens_test = st.density
                for rank, (j, wj) in enumerate(ev.get("top_latents", [])):
                    label_latents.append({"store": name, "q": c.q, "s": c.s, "seed": seed, "rank": rank + 1,
                                          "latent": j, "weight": wj, "density_test": float(dens_test[j])})
                if np.isclose(c.q, dq) and np.isclose(c.s, ds):
                    for i, v in enumerate(st.grouped_density(cfg.density_groups)):
                        dens_rows.append({"store": name, "q": c.q, "s": c.s, "group": i, "density": v,
                                          "uniform": sae.k / sae.shape.d_z})
                if cfg.browser:
                    self._browser(task, sae, meta, c, name, sdir, device, cfg, [j for j, _ in ev.get("top_latents", [])])
            k = saes[c.tag, cfg.seed][0].k
            if k not in pca_preds:
                pca_preds[k] = [fit(pca.transform(x_clf, k), y_clf, pca.transform(x_val, k), pca.transform(x_test, k),
                                    clf_seeds[0])[0]]
            per_seed["pca_k"] = [pca_preds[k]]
            sae0 = saes[c.tag, cfg.seed][0]
            common = {
                "store": name, "codec": store.codec.get("spec"), "repr": rep.name, "label": cfg.label,
                "q": c.q, "s": c.s, "d": sae0.shape.d, "d_z": sae0.shape.d_z, "k": k, "epochs": c.epochs,
                **{m: _nanmean([r[m] for r in mets]) for m in mets[0]},
                "dead_fraction_max": float(max(r["dead_fraction"] for r in mets)),
                "f1_ref": ref["f1"], "f1_ref_val": ref["f1_val"],
            }
            series = {f: scorer.series(p) for f, p in per_seed.items() if p}
            for f, sr in series.items():
                d = sr["reps"] - ref["reps"]
                results.append({**common, "kind": "feature" if f in FEATURES else "baseline", "feature": f,
                                "n_seeds": len(per_seed[f]), "f1": sr["f1"], "f1_val": sr["f1_val"],
                                "f1_seed_sd": sr["f1_seed_sd"], "delta_f1": sr["f1"] - ref["f1"], **_ci("delta_f1", d)})
            for a, b in (("position", "magnitude"), ("z", "random_topk"), ("z", "pca_k"), ("z", "shuffled")):
                if a in series and b in series:
                    contrasts.append({"store": name, "q": c.q, "s": c.s, "contrast": f"{a} - {b}",
                                      "difference": series[a]["f1"] - series[b]["f1"],
                                      **_ci("difference", series[a]["reps"] - series[b]["reps"])})
        return _StoreOut(name, task, results, contrasts, history, reference, pd.DataFrame(dens_rows),
                         pd.DataFrame(label_latents), notes, slug=sdir.name)

    def _evaluate(self, sae, c: SAEConfig, seed: int, task: TaskData, x_clf, x_val, x_test, y_clf, clf_seeds,
                  cfg: SAEStudyConfig, device, ci: dict) -> dict:
        """Predictions (class indices) on the validation and test rows of every classifier of one SAE.

        The classifiers are fitted on the classifier rows' codes; validation and test rows are then
        encoded and predicted chunk by chunk (predictions are per row), so their codes and features
        are never all held at once."""
        rnd = random_dictionary(sae, c.seed(seed) + 7919)
        z_clf = encode_np(sae, x_clf, device)[0]
        f_clf = code_features(z_clf, sae.k)
        models = {f: [L1Model(f_clf[f], y_clf, cfg.classifier(cs)) for cs in clf_seeds] for f in FEATURES}
        w = models["z"][0].weights
        top = [[int(j), float(w[j])] for j in np.argsort(-w, kind="stable")[: cfg.top_latents] if w[j] > 0]
        del f_clf
        models["random_topk"] = [L1Model(encode_np(rnd, x_clf, device)[0], y_clf, cfg.classifier(clf_seeds[0]))]
        y_shuf = shuffle_by_speaker(y_clf, task.speaker[task.roles["clf"]], seed)
        models["shuffled"] = [L1Model(z_clf, y_shuf, cfg.classifier(clf_seeds[0]))]
        del z_clf

        def predict(x: np.ndarray) -> dict:
            out = {f: [[] for _ in ms] for f, ms in models.items()}
            for a in range(0, len(x), EVAL_ROWS):
                z = encode_np(sae, x[a : a + EVAL_ROWS], device)[0]
                feats = {**code_features(z, sae.k), "shuffled": z,
                         "random_topk": encode_np(rnd, x[a : a + EVAL_ROWS], device)[0]}
                for f, ms in models.items():
                    for i, m in enumerate(ms):
                        out[f][i].extend(int(ci[v]) for v in m.predict(feats[f]))
            return out

        pv, pt = predict(x_val), predict(x_test)
        preds = {f: [[pv[f][i], pt[f][i]] for i in range(len(ms))] for f, ms in models.items()}
        return {"preds": preds, "top_latents": top}

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
        # Codes chunk by chunk into per-latent counts and top rows: no [rows, d_z] array of the whole page.
        summ = summarize((encode_np(sae, task.values(rows[a : a + EVAL_ROWS]), device)[0]
                          for a in range(0, len(rows), EVAL_ROWS)), info, cfg.browser_top)
        head = {"store": name, "codec": store.codec.get("spec"), "representation": task.rep.name,
                "label": task.label, "q": c.q, "s": c.s, "d": sae.shape.d, "d_z": sae.shape.d_z, "k": sae.k,
                "epochs": c.epochs, "rows": len(rows)}
        write_browser(sdir / "browser" / f"{c.tag}.html", f"SAE {c.tag} on {name}", head, summ, info,
                      cfg.browser_latents, first=first)

    # -- all stores ------------------------------------------------------------
    def _collect(self, stores, outs: list[_StoreOut], cfg: SAEStudyConfig, out: Path) -> AnalysisResult:
        allres = pd.DataFrame([r for o in outs for r in o.results])
        res = allres[allres["kind"] == "feature"].reset_index(drop=True)
        ref = pd.DataFrame([o.reference for o in outs])
        notes = [n for o in outs for n in o.notes] + _duplicates(out, outs, cfg)
        hist = pd.DataFrame([h for o in outs for h in o.history])
        if len(hist):
            hist = hist[hist["seed"] == cfg.seed]  # one curve per configuration: the first seed
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
                             "store (cf. Wang et al. Fig. 2/3), mean over SAE and classifier seeds; bands: paired 95% intervals "
                             "over test speakers and SAE seeds; dotted: majority-class predictor.", "figure"))
        p = figures.position_magnitude(res, ts, out / "position_magnitude.png")
        arts.append(Artifact(p.name, f"ΔF1 (%) of z, position-only and magnitude-only features at s = {ts:g} "
                             "(cf. Wang et al. Table 2), with 95% intervals (position - magnitude paired: "
                             "contrasts.csv).", "figure"))
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
        table_art(allres, "results.csv", "All configurations: F1 and ΔF1 (with 95% intervals over test speakers "
                  "and SAE seeds) of z / position / magnitude and of the baselines (random_topk: TopK on a random "
                  "dictionary; pca_k: top-k principal components of u; shuffled: labels permuted between speakers), "
                  "validation F1, FVU, L0, dead-latent fraction (test set, mean and max over seeds; and in training).")
        table_art(pd.DataFrame([c for o in outs for c in o.contrasts]).reset_index(drop=True), "contrasts.csv",
                  "Paired differences of macro-F1 on the same test speakers and SAE seeds, with 95% intervals: "
                  "position - magnitude, and z against each baseline.")
        sel = []
        for o in outs:
            best = select_configuration(res[res["store"] == o.label])
            sel.append({"store": o.label, **({"q": best["q"], "s": best["s"], "f1_val": best["f1_val"],
                        "delta_f1": best["delta_f1"], "delta_f1_low": best["delta_f1_low"],
                        "delta_f1_high": best["delta_f1_high"], "selected_on": "validation"} if best is not None
                        else {"selected_on": "none (no validation speakers: set --monitor-fraction > 0)"})})
        selected = pd.DataFrame(sel)
        table_art(selected, "selected.csv", "Best configuration per store by validation macro-F1 of z (the "
                  "monitor speakers; never the test set), with its test ΔF1 and interval.")
        table_art(ref[["store", "codec", "label", "classes", "paper_codec", "paper_setting", "published_reason"]],
                  "published_match.csv", "Whether each store's run matches a setting of Wang et al. 2026 (binary "
                  "task, codec variant, representation; splits are always speaker-disjoint), and why not.")
        wide = _posmag_table(res, ts)
        table_art(wide, f"position_magnitude_s{ts:g}.csv", f"ΔF1 (%) at s = {ts:g}: z, position, magnitude by q.")
        if len(dens):
            table_art(dens, "density.csv", "Activation density per ordered latent group.")
        if len(hist):
            table_art(hist, "training.csv", "SAE reconstruction loss during training (first seed), per configuration.")
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
                for c in cfg.grid(1, 1):
                    arts.append(Artifact(f"stores/{o.slug or o.label}/browser/{c.tag}.html",
                                         f"Feature browser, {o.label}, q={c.q:g}, s={c.s:g}", "page", o.label))
        _write_task(out, outs, cfg)
        con = pd.DataFrame([c for o in outs for c in o.contrasts])
        summary = " ".join([_summary(res, ref, ts, selected, allres, con)] + notes)
        return AnalysisResult(self.name, self.title, tuple(arts), summary, tuple(published))

    def _published(self, res, ref, outs, cfg, ts, out: Path) -> list[Artifact]:
        # Only stores whose task, codec variant and representation are the paper's get rows.
        outs = [o for o in outs if not o.reference["published_reason"]]
        keys = {o.label: o.reference["paper_codec"] for o in outs}
        codecs = {o.label: o.reference["codec"] for o in outs}
        arts = []
        t1 = table("table1")
        rows = []
        for o in outs:
            setting = o.reference["paper_setting"]
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
        for o in outs:
            setting = o.reference["paper_setting"]
            if setting == "us_vs_uk":
                k = keys[o.label]
                for _, pr in t2[t2["codec"] == k].iterrows():
                    for q in (2, 5, 10, 20):
                        ours = res[(res["store"] == o.label) & np.isclose(res["q"], q) & np.isclose(res["s"], 0.05)
                                   & (res["feature"] == pr["feature"])]
                        rows.append({"codec": k, "setting": setting, "feature": pr["feature"], "q": q, "s": 0.05,
                                     "published": float(pr[f"q{q}"]), **_ours(ours),
                                     "ours_store": o.label, "source": f"{SOURCE}, Table 2 (ΔF1 %, US vs UK)"})
        if rows:
            arts.append(_write_pub(out, "published_table2.csv", rows,
                                   "Published vs ours: ΔF1 (%) of z / position / magnitude at s = 5% (Wang et al. Table 2).",
                                   codecs))
        t3 = table("table3")
        rows = []
        for o in outs:
            setting = o.reference["paper_setting"]
            k = keys[o.label]
            if setting == "us_vs_uk" and k.startswith("encodec_"):
                for _, pr in t3.iterrows():
                    for s_pct in (5, 10):
                        ours = res[(res["store"] == o.label) & np.isclose(res["q"], pr["q"])
                                   & np.isclose(res["s"], s_pct / 100) & (res["feature"] == "z")]
                        rows.append({"codec": k, "setting": setting, "q": int(pr["q"]), "s": s_pct / 100,
                                     "published": float(pr[f"{k}_s{s_pct}"]), **_ours(ours),
                                     "ours_store": o.label, "source": f"{SOURCE}, Table 3 (ΔF1 %, US vs UK)"})
        if rows:
            arts.append(_write_pub(out, "published_table3.csv", rows,
                                   "Published vs ours: EnCodec ΔF1 (%) by bitrate (Wang et al. Table 3).", codecs))
        return arts


def _ours(row: pd.DataFrame) -> dict:
    if not len(row):
        return {"ours": np.nan, "ours_low": np.nan, "ours_high": np.nan}
    r = row.iloc[0]
    return {"ours": round(100 * float(r["delta_f1"]), 2), "ours_low": round(100 * float(r["delta_f1_low"]), 2),
            "ours_high": round(100 * float(r["delta_f1_high"]), 2)}


TASK_FILE = "task.json"


def _task_key(o: "_StoreOut", cfg: SAEStudyConfig) -> str:
    """What makes two SAE runs the same: store content, rows and labels per role, and the settings
    that change results (not output options such as the browser)."""
    t = o.task
    keep = ("repr", "q", "s", "epochs", "long_epochs", "long_q", "long_s", "lr", "eps", "batch_size", "aux_k",
            "normalize", "seed", "sae_seeds", "clf_seeds", "C", "max_iter", "n_boot")
    return config_hash({"store": t.store.fingerprint, "cfg": {k: getattr(cfg, k) for k in keep},
                        "roles": {r: _rows_hash(v) for r, v in t.roles.items()},
                        "labels": hashlib.sha256("\x1f".join(t.y[np.concatenate(list(t.roles.values()))]).encode()).hexdigest()})


def _write_task(out: Path, outs: list, cfg: SAEStudyConfig) -> None:
    write_json(out / TASK_FILE, {o.label: _task_key(o, cfg) for o in outs})


def _duplicates(out: Path, outs: list, cfg: SAEStudyConfig) -> list[str]:
    """Warnings for stores whose task equals one an SAE analysis beside this one already ran
    (e.g. a study's all-accents entry on a corpus with only two accents)."""
    out = Path(out).resolve()
    mine = {o.label: _task_key(o, cfg) for o in outs}
    seen = []
    for cand in list(out.parent.glob(f"*/{TASK_FILE}")) + list(out.parent.parent.glob(f"*/{out.name}/{TASK_FILE}")):
        if cand.parent.resolve() == out:
            continue
        try:
            theirs = json.loads(cand.read_text())
        except (OSError, ValueError):
            continue
        for st, key in mine.items():
            if theirs.get(st) == key:
                seen.append(f"Warning: {st} here is the same task as in {cand.parent} (same store content, rows, "
                            f"labels and settings): a duplicate analysis.")
    return sorted(set(seen))


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


def _unique_labels(names: list[str]) -> list[str]:
    """Display names, a later duplicate numbered (``name (2)``)."""
    out, seen = [], {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


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


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}"


def _posmag_words(con: pd.DataFrame, store: str, s: float) -> str:
    """How many configurations at sparsity s have position - magnitude clearly > 0, < 0, or neither."""
    c = con[(con["store"] == store) & np.isclose(con["s"], s) & (con["contrast"] == "position - magnitude")] \
        if len(con) else con
    if not len(c):
        return ""
    pos, neg = int((c["difference_low"] > 0).sum()), int((c["difference_high"] < 0).sum())
    return (f"position − magnitude (paired 95% interval) excludes 0 upwards in {pos}, downwards in {neg}, "
            f"neither in {len(c) - pos - neg} of {len(c)} configurations")


def _summary(res: pd.DataFrame, ref: pd.DataFrame, s: float, selected: pd.DataFrame, allres: pd.DataFrame,
             con: pd.DataFrame) -> str:
    parts = []
    for _, r in ref.iterrows():
        st = r["store"]
        d = res[(res["store"] == st) & np.isclose(res["s"], s)]
        mean = d.groupby("feature")["delta_f1"].mean()
        which = "magnitude" if mean.get("magnitude", -9) > mean.get("position", -9) else "position"
        text = (f"{st} ({r['classes']}): reference macro-F1 on u {100 * r['f1_ref']:.1f}% "
                f"[{100 * r['f1_ref_low']:.1f}, {100 * r['f1_ref_high']:.1f}] (majority class "
                f"{100 * r['majority_f1']:.1f}%); at s={s:g} mean ΔF1 z {_pct(mean.get('z', np.nan))}, "
                f"position {_pct(mean.get('position', np.nan))}, magnitude {_pct(mean.get('magnitude', np.nan))} "
                f"points ({which} higher on average; {_posmag_words(con, st, s) or 'no paired contrast'})")
        sel = selected[selected["store"] == st].iloc[0]
        if sel["selected_on"] == "validation":
            b = allres[(allres["store"] == st) & np.isclose(allres["q"], sel["q"]) & np.isclose(allres["s"], sel["s"])]
            base = ", ".join(f"{f} {_pct(v)}" for f, v in zip(b["feature"], b["delta_f1"]) if f in BASELINES)
            text += (f"; configuration chosen on validation q={sel['q']:g}, s={sel['s']:g}: test ΔF1 of z "
                     f"{_pct(sel['delta_f1'])} [{_pct(sel['delta_f1_low'])}, {_pct(sel['delta_f1_high'])}] over "
                     f"{r['speakers_test']} test speakers and {r['sae_seeds']} SAE seeds (baselines: {base})")
        else:
            text += "; no configuration chosen (no validation speakers)"
        allz = res[(res["store"] == st) & (res["feature"] == "z")]
        text += (f"; test FVU {allz['fvu'].min():.3f}–{allz['fvu'].max():.3f}, dead latents "
                 f"{100 * allz['dead_fraction'].min():.0f}–{100 * allz['dead_fraction'].max():.0f}%.")
        if r["published_reason"]:
            text += f" No published comparison: {r['published_reason']}."
        parts.append(text)
        bad = allz[allz["fvu"] > 1]
        if len(bad):
            parts.append(
                f"Warning: {len(bad)} of {len(allz)} SAEs on {st} reconstruct worse than the mean (FVU > 1): "
                f"they are undertrained; raise --lr or --epochs, lower --batch-size, or use --normalize."
            )
    return " ".join(parts)
