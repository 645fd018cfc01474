"""Configuration of a probing run (also the ``codeclens probe`` options)."""

from __future__ import annotations

import dataclasses

LEVELS = ("frame", "utterance")
BACKENDS = ("torch", "sklearn")
SPLITS = ("auto", "utt", "spk")
CONTROLS = ("code", "type", "none")
CV = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    task: tuple[str, ...] = ("phone",)
    """Label columns to probe (categorical -> logistic regression, continuous -> ridge); f0 = f0_hz on voiced frames."""
    repr: str = "layer:*"
    """Representations, e.g. layer:1-8,cumulative:1-8,latent (layer:* = every layer of a store)."""
    level: str = "frame"
    """frame: one row per codec frame; utterance: utterance means of the representations."""
    backend: str = "torch"
    """torch (exact count-table fits for layer:k, batched whitened fits otherwise) or sklearn (parity checks)."""
    device: str = "auto"
    """Torch device (auto: CUDA when present)."""
    workers: int = 1
    """CPU threads for count-table work (layer:k / codes:k probes) run side by side: 2 fits a task's probes
    beside its controls and runs the classification tasks (phone, speaker) beside the numeric ones (f0,
    f0_st). The numbers are bit for bit the same with any value; time and memory are not (planted stores,
    default run, 2 cores: 9.7-10.2 -> 6.9-8.8 s at 4 M frames; peak 0.63-0.71 -> 0.82-0.97 GB at 4 M and
    0.77 -> 1.15 GB at 16 M), so the default is 1. 0: one per CPU, at most 2."""
    split: str = "auto"
    """auto (speaker tasks: split_utt, closed-set; others: split_spk, speaker-disjoint), utt or spk."""
    cv: str = "auto"
    """Speaker-fold cross-validation for speaker-disjoint tasks (test predictions of all folds pooled): auto (when
    split_spk holds fewer than --min-test-speakers test speakers), on, off."""
    folds: int = 5
    """Folds over speakers when cross-validating (fold f test, fold f+1 val, the rest train)."""
    min_test_speakers: int = 8
    """cv=auto cross-validates when the speaker-disjoint split has fewer test speakers than this."""
    l2: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    """L2 strengths of logistic probes (mean loss + l2*|W|^2 on whitened features); the best on val is kept."""
    ridge_l2: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    """L2 strengths of ridge probes, on the whitened scale (unit variance per direction: l2 = 1 halves each
    coefficient), so the grid spans no to strong shrinkage; all strengths cost one eigendecomposition."""
    f0_semitones: bool = True
    """With task f0, also probe f0_st: semitones relative to the speaker's median F0 (pitch contour without
    the speaker's mean pitch)."""
    l1: float = 0.0
    """Optional L1 strength (proximal gradient; 0 = off)."""
    balance: bool = False
    """Weight classes inversely to their train frequency."""
    max_iter: int = 300
    """Most L-BFGS iterations per probe group."""
    patience: int = 3
    """Early stopping: validation checks (every 10 L-BFGS iterations; MLP probe: every round) without a better loss."""
    control: str = "code"
    """Control task (Hewitt & Liang): code (each code / code tuple gets a random label), type (each phone type does), none."""
    lookup: bool = True
    """Report the code-lookup upper bound (majority train label per code) beside layer:k probes."""
    bootstrap: int = 1000
    """Bootstrap replicates for the 95 percent BCa intervals and the tests against chance; they resample test
    speakers on speaker-disjoint splits, test utterances otherwise (0 = none)."""
    max_train_frames: int | None = None
    """Subsample train utterances to at most this many frames (None: all)."""
    memory_mb: int = 512
    """Memory budget of one batched frame fit: the whitened frames held, every representation's whitening and
    folded tables, the optimiser's state and a chunk's temporaries (count tables: a group's table copies).
    Larger groups are split, larger single probes streamed (re-materialised from the codes on every pass, so
    memory stays flat in the number of frames)."""
    select_frames: int = 200_000
    """Frame-path logistic probes (cumulative:k, latent, open-set) with more train rows than this choose their L2
    strength on a seeded subsample of whole utterances of at most this many train rows (and as many val rows),
    held in memory, then refit the chosen strength alone on all train rows from the subsample's solution (see
    --refit-passes). Bounds the passes over the corpus; 0: fit every strength on all rows (the old path,
    hundreds of streamed passes beyond --memory-mb)."""
    refit_passes: int = 20
    """Most loss-and-gradient evaluations over all train rows (each one streamed pass) when refitting the chosen
    strength after --select-frames (0: keep the subsample's solution)."""
    seed: int = 0
    """Seed of control labels, subsampling, bootstrap and MLP initialisation/minibatches."""
    mlp: bool = False
    """Also fit a one-hidden-layer MLP probe per representation (probe=mlp; with controls also mlp_control
    and mlp_selectivity). Off by default: the linear probe is the reference, an MLP needs its control to be read."""
    mlp_hidden: int = 256
    """Hidden (ReLU) units of the MLP probe."""
    mlp_weight_decay: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    """MLP strengths tried (mean loss + wd*(|W1|^2 + |W2|^2)); the best on the val split is kept."""
    mlp_epochs: int = 100
    """Most rounds of the MLP probe (a round: one epoch of Adam on minibatches of 256, at least 50 steps);
    each strength early-stops after --patience rounds without a better val loss."""

    def __post_init__(self):
        if not self.task:
            raise ValueError("give at least one task")
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}")
        if self.control not in CONTROLS:
            raise ValueError(f"control must be one of {', '.join(CONTROLS)}")
        if not self.l2 or any(v < 0 for v in self.l2):
            raise ValueError("l2 needs at least one value, all >= 0")
        if not self.ridge_l2 or any(v < 0 for v in self.ridge_l2):
            raise ValueError("ridge_l2 needs at least one value, all >= 0")
        if self.cv not in CV:
            raise ValueError(f"cv must be one of {', '.join(CV)}")
        if self.folds < 3:
            raise ValueError("folds must be >= 3 (a test, a val and at least one train fold)")
        if self.min_test_speakers < 0:
            raise ValueError("min_test_speakers must be >= 0")
        if self.l1 < 0:
            raise ValueError("l1 must be >= 0")
        if self.max_iter < 1 or self.patience < 1:
            raise ValueError("max_iter and patience must be >= 1")
        if self.workers < 0:
            raise ValueError("workers must be >= 0 (0: one per CPU, at most 2)")
        if self.bootstrap < 0:
            raise ValueError("bootstrap must be >= 0")
        if self.max_train_frames is not None and self.max_train_frames < 1:
            raise ValueError("max_train_frames must be >= 1")
        if self.select_frames < 0:
            raise ValueError("select_frames must be >= 0 (0: no subsample)")
        if self.refit_passes < 0:
            raise ValueError("refit_passes must be >= 0")
        if self.memory_mb < 1:
            raise ValueError("memory_mb must be >= 1")
        if self.mlp_hidden < 1 or self.mlp_epochs < 1:
            raise ValueError("mlp_hidden and mlp_epochs must be >= 1")
        if not self.mlp_weight_decay or any(v < 0 for v in self.mlp_weight_decay):
            raise ValueError("mlp_weight_decay needs at least one value, all >= 0")
