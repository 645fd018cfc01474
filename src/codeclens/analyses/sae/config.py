"""Configurations of the SAE analyses (light: importing them loads no torch or matplotlib,
so building the CLI stays fast)."""

from __future__ import annotations

import dataclasses

import numpy as np

PAPER_Q = (2.0, 5.0, 10.0, 20.0)
"""Latent ratios q = d_z / d of Wang et al. 2026."""
PAPER_S = (0.5, 0.25, 0.10, 0.05)
"""Relative sparsities s of Wang et al. 2026 (k = ceil(s·d))."""


def _check_optimiser(lr: float, eps: float, batch_size: int, aux_k: int, auto: bool = False) -> None:
    if (lr < 0 if auto else lr <= 0) or eps <= 0:
        raise ValueError("lr must be positive (0 = auto)" if auto else "lr and eps must be positive")
    if batch_size < (0 if auto else 1):
        raise ValueError("batch_size must be >= 1" + (" (0 = auto)" if auto else ""))
    if aux_k < -1:
        raise ValueError("aux_k must be >= 0, or -1 for d/2")


@dataclasses.dataclass(frozen=True)
class SAEStudyConfig:
    """Settings of the SAE study (defaults follow Wang et al. 2026)."""

    repr: str = ""
    """Representation; empty = mean(cumulative:L), the utterance mean of the codec's ê. Frame-level names train
    frame SAEs."""
    label: str = "accent"
    """Label column to classify (utterance or frame column)."""
    classes: tuple[str, ...] = ()
    """Keep only rows with these label values (e.g. US,UK), after label_map; empty = all."""
    label_map: tuple[str, ...] = ()
    """Relabel before classifying: FROM=TO rules, TO empty drops, FROM * is every other label (e.g.
    US=US,UK=,*=non-US-UK)."""
    q: tuple[float, ...] = PAPER_Q
    """Latent ratios q = d_z / d."""
    s: tuple[float, ...] = PAPER_S
    """Relative sparsities s (k = ceil(s·d))."""
    epochs: int = 0
    """Training epochs; 0 = scaled to the data (about 1000 optimiser steps, at most the paper's 200)."""
    long_epochs: int = 0
    """Epochs for the slow configurations (q in long_q and s in long_s); 0 = scaled (about 2500 steps, at most
    the paper's 500)."""
    long_q: tuple[float, ...] = (2.0, 5.0)
    """q values of the slow configurations."""
    long_s: tuple[float, ...] = (0.10, 0.05)
    """s values of the slow configurations."""
    lr: float = 0.0
    """Adam learning rate; 0 = 1 / (optimiser steps), between 1e-5 and 1e-3, on normalised inputs. The paper's
    schedule: --lr 1e-5 --batch-size 1024 --epochs 200 --long-epochs 500."""
    eps: float = 6.25e-10
    """Adam epsilon."""
    batch_size: int = 0
    """SAE batch size; 0 = the paper's 1024, smaller (down to 16) when there are fewer than 8 batches per epoch."""
    aux_k: int = -1
    """AuxK dead-latent loss (Gao et al., the recipe the paper cites): dead latents used; -1 = d/2, 0 = off."""
    normalize: bool = False
    """Scale inputs by one scalar (their RMS distance to the geometric median) before the SAE; not in the
    paper, metrics unchanged, helps when the representation's spread is tiny or huge."""
    seed: int = 0
    """Seed of SAE initialisation, batch order and splits."""
    sae_seeds: int = 3
    """SAEs per configuration (seeds seed, seed+1, ...): ΔF1 is their mean, intervals resample them."""
    clf_seeds: int = 2
    """Classifier (saga) seeds per SAE; F1 is averaged over them."""
    n_boot: int = 1000
    """Bootstrap replicates over test speakers (and SAE seeds) for the intervals."""
    grouping: str = "paper"
    """For label 'accent' without a label_map: 'paper' groups accents as Wang et al. (North America incl.
    Canada -> US; British Isles except Irish -> UK; other regions -> non-US-UK; Irish dropped); 'none' keeps them."""
    C: float = 1.0
    """Inverse L1 strength of the logistic regression."""
    max_iter: int = 3000
    """saga iterations of the logistic regression."""
    split_column: str = "split_spk"
    """Speaker-disjoint split column of the store's utterances."""
    sae_split: str = "train"
    """Split the SAEs train on."""
    clf_split: str = "val"
    """Split the classifier trains on (a monitor_fraction of its speakers monitors SAE loss instead)."""
    test_split: str = "test"
    """Split the classifier is scored on."""
    monitor_fraction: float = 0.5
    """Fraction of the classifier split's speakers (per label) held out to monitor SAE loss (paper: half)."""
    speaker_fractions: tuple[float, ...] = ()
    """Instead of the split column, re-partition speakers per label into SAE / classifier / test with these
    fractions (e.g. 0.4,0.4,0.2: more classifier speakers on small corpora)."""
    max_rows: int = 50_000
    """At most this many rows per classifier/test role (frame-level representations)."""
    table_s: float = 0.05
    """Sparsity of the z / position / magnitude table (nearest grid value)."""
    density_q: float = 2.0
    """q of the activation-density figure (nearest grid value)."""
    density_s: float = 0.05
    """s of the activation-density figure (nearest grid value)."""
    density_groups: int = 16
    """Ordered latent groups of the density figure."""
    browser: bool = True
    """Write an HTML feature browser per SAE."""
    browser_latents: int = 64
    """Latents shown per browser page."""
    browser_top: int = 8
    """Top-activating rows shown per latent."""
    top_latents: int = 10
    """Latents with the largest classifier weights listed per SAE (label_latents.csv, first in the browser)."""
    published_setting: str = "auto"
    """Paper setting the published tables quote: auto (from the task's classes), us_vs_uk or us_vs_non_us_uk
    (then the task must be it). Rows appear only when task, codec variant and representation match."""
    device: str = "auto"
    """Torch device."""
    threads: int = 1
    """Torch intra-op threads during the run (0 = torch's default). 1 by default: the SAEs are small
    ([batch, d] x [d, d_z] products), so a second thread mostly waits and spins; on the shared
    2-core test machine two threads cost several times the CPU per step (docs/sae.md)."""

    def __post_init__(self):
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if self.speaker_fractions and (len(self.speaker_fractions) != 3 or any(f < 0 for f in self.speaker_fractions)
                                       or not np.isclose(sum(self.speaker_fractions), 1.0)):
            raise ValueError("speaker_fractions must be three non-negative numbers summing to 1 (SAE, classifier, test)")
        if not self.q or not self.s:
            raise ValueError("q and s grids must not be empty")
        if len(set(self.q)) != len(self.q) or len(set(self.s)) != len(self.s):
            raise ValueError("q and s grids must not repeat a value")
        if any(q <= 0 for q in self.q) or any(not 0 < s <= 1 for s in self.s):
            raise ValueError("q must be > 0 and s in (0, 1]")
        if self.epochs < 0 or self.long_epochs < 0:
            raise ValueError("epochs must be >= 1 (0 = auto)")
        if self.sae_seeds < 1 or self.clf_seeds < 1 or self.n_boot < 10:
            raise ValueError("sae_seeds and clf_seeds must be >= 1, n_boot >= 10")
        if self.grouping not in ("paper", "none"):
            raise ValueError("grouping must be paper or none")
        if not 0 <= self.monitor_fraction < 1:
            raise ValueError("monitor_fraction must be in [0, 1)")
        if self.top_latents < 0 or self.browser_latents < 0 or self.browser_top < 1:
            raise ValueError("top_latents and browser_latents must be >= 0, browser_top >= 1")
        if self.density_groups < 1 or self.max_rows < 10:
            raise ValueError("density_groups must be >= 1 and max_rows >= 10")
        if self.published_setting not in ("auto", "us_vs_uk", "us_vs_non_us_uk"):
            raise ValueError("published_setting must be auto, us_vs_uk or us_vs_non_us_uk")
        _check_optimiser(self.lr, self.eps, self.batch_size, self.aux_k, auto=True)
        if self.C <= 0 or self.max_iter < 1:
            raise ValueError("C must be > 0 and max_iter >= 1")

    def schedule(self, n_train: int):
        """(TrainConfig, epochs, long_epochs) for ``n_train`` SAE rows: set values, auto ones scaled."""
        from .sweep import AutoSchedule, TrainConfig

        auto = AutoSchedule()
        batch = self.batch_size or auto.batch_for(n_train)
        epochs = self.epochs or auto.epochs_for(batch, n_train, long=False)
        long_epochs = self.long_epochs or auto.epochs_for(batch, n_train, long=True)
        lr = self.lr or auto.lr_for(batch, n_train, epochs)
        # The automatic rate is in units of the data's spread, so it implies normalised inputs.
        train = TrainConfig(lr=lr, eps=self.eps, batch_size=batch, aux_k=self.aux_k,
                            normalize=self.normalize or not self.lr)
        return train, epochs, long_epochs

    def classifier(self, seed: int | None = None):
        from .classify import ClassifierConfig

        return ClassifierConfig(C=self.C, max_iter=self.max_iter, seed=self.seed if seed is None else seed)

    def grid(self, epochs: int | None = None, long_epochs: int | None = None):
        from .sweep import paper_grid

        return paper_grid(self.q, self.s, epochs or self.epochs or 1, long_epochs or self.long_epochs or 1,
                          self.long_q, self.long_s)


@dataclasses.dataclass(frozen=True)
class LatentProbeConfig:
    """Frame-level SAEs per layer and the attributes their latents are probed for."""

    repr: str = "layer:*"
    """Frame-level representations, one SAE each (e.g. layer:* or layer:1-4,cumulative:8)."""
    attributes: tuple[str, ...] = ()
    """Frame/utterance columns to probe (empty: those of phone, speaker, f0_hz, f0 the store has)."""
    q: float = 4.0
    """Latent ratio d_z / d."""
    s: float = 0.05
    """Relative sparsity (k = ceil(s·d))."""
    epochs: int = 20
    """Training epochs."""
    lr: float = 1e-4
    """Adam learning rate."""
    eps: float = 6.25e-10
    """Adam epsilon."""
    batch_size: int = 1024
    """Frames per batch."""
    aux_k: int = -1
    """AuxK dead-latent loss: dead latents used (-1 = d/2, as Gao et al.; 0 = off)."""
    normalize: bool = True
    """Scale inputs by one scalar (RMS distance to the geometric median), so lr means the same for every layer."""
    seed: int = 0
    """Seed of initialisation and batch order."""
    split_column: str = "split_spk"
    """Speaker-disjoint split column."""
    train_split: str = "train"
    """Split the SAEs train on."""
    probe_split: str = "test"
    """Split the latents are probed on."""
    max_frames: int = 100_000
    """At most this many probe frames (seeded subsample)."""
    purity: float = 0.8
    """Purity at which a latent counts as monosemantic for a categorical attribute."""
    rho: float = 0.5
    """|Spearman rho| at which a latent counts as monosemantic for a continuous attribute."""
    min_active: int = 20
    """Latents active on fewer probe frames are not scored."""
    null_shuffles: int = 20
    """Shuffled labellings of the null: a latent must score above its best shuffled score (0 = no null)."""
    device: str = "auto"
    """Torch device."""
    threads: int = 1
    """Torch intra-op threads during the run (0 = torch's default). 1 by default: the SAEs are small
    ([batch, d] x [d, d_z] products), so a second thread mostly waits and spins; on the shared
    2-core test machine two threads cost several times the CPU per step (docs/sae.md)."""

    def __post_init__(self):
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if self.q <= 0 or not 0 < self.s <= 1 or self.epochs < 1:
            raise ValueError("need q > 0, s in (0, 1] and epochs >= 1")
        if self.null_shuffles < 0:
            raise ValueError("null_shuffles must be >= 0")
        if not 0 < self.purity <= 1 or not 0 < self.rho <= 1:
            raise ValueError("purity and rho must be in (0, 1]")
        if self.train_split == self.probe_split:
            raise ValueError("train_split and probe_split must differ")
        _check_optimiser(self.lr, self.eps, self.batch_size, self.aux_k)
