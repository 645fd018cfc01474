"""Shared fixtures: small real audio and a fitted melrvq, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def audio_folder(tmp_path_factory) -> Path:
    """Six short speech-like wavs for two speakers, plus one corrupt file."""
    import soundfile as sf

    from codeclens.codecs.calibration import calibration_audio

    root = tmp_path_factory.mktemp("audio")
    for i in range(6):
        d = root / f"spk{i % 2 + 1}"
        d.mkdir(exist_ok=True)
        sf.write(d / f"u{i}.wav", calibration_audio(16000, 1.0 + 0.25 * i, seed=i), 16000)
    (root / "spk1" / "broken.wav").write_text("not audio")
    return root


@pytest.fixture(scope="session")
def melrvq_dir(tmp_path_factory, audio_folder) -> Path:
    """A melrvq checkpoint fitted on ``audio_folder`` (4 layers x 32 codes)."""
    from codeclens.codecs.melrvq import MelRVQConfig, fit_melrvq
    from codeclens.corpora import load_corpus

    out = tmp_path_factory.mktemp("melrvq")
    fit_melrvq(load_corpus(str(audio_folder)), out, MelRVQConfig(n_layers=4, codebook_size=32), iters=10, progress=False)
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _one_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def one_thread():
    """One torch intra-op thread while a test trains (the shared CI machine is small and busy)."""
    yield from _one_thread()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models: one intra-op thread beats two fighting over a shared CPU
    (opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    yield from _one_thread()
