"""ablate runs on every registered codec kind (small random-weight configs, saved and reloaded)."""

import pandas as pd
import pytest

from codeclens.cli import main
from codeclens.codecs import CODECS

SPECS = {
    "encodec": "encodec:24khz@1.5kbps?size=tiny",
    "dac": "dac:16khz?size=tiny",
    "mimi": "mimi?size=tiny&layers=4",
    "speechtokenizer": "speechtokenizer?size=tiny",
}


# Small models on a shared 2-core machine run far faster without intra-op threads.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_ablate_runs_for_codec(kind, audio_folder, tmp_path):
    assert kind in CODECS
    from codeclens.codecs.testing import save_random_checkpoint

    spec = save_random_checkpoint(SPECS[kind], tmp_path / "ckpt", seed=0)
    store = tmp_path / "store"
    assert main(["extract", "--corpus", str(audio_folder), "--codec", spec, "--out", str(store), "--labels", "none",
                 "--limit", "3", "--quiet"]) == 0
    out = tmp_path / "out"
    assert main(["ablate", "--store", str(store), "--out", str(out), "--interventions", "drop:1,mean:2,swap:2,truncate:1,noise:2",
                 "--measures", "stoi,loudness", "--n-utts", "1", "--examples", "1", "--max-seconds", "1.0",
                 "--n-boot", "20", "--quiet"]) == 0
    eff = pd.read_csv(out / "store" / "effects.csv")
    assert {"none", "drop 1", "mean 2", "swap 2", "keep 1", "noise 2"} <= set(eff["intervention"])
    none = eff[(eff["intervention"] == "none") & (eff["measure"] == "stoi")]["mean"].iloc[0]
    assert none == pytest.approx(1.0)
    # Every edit reaches the decoder: a codec that ignored the layer mask or the edited codes
    # would give back the unedited decode.
    import numpy as np
    import soundfile as sf

    (ex,) = list((out / "store" / "audio").iterdir())
    decode = sf.read(ex / "decode.wav", dtype="float32")[0]
    for edit in ("drop_1", "swap_2", "keep_1", "noise_2"):
        audio = sf.read(ex / f"{edit}.wav", dtype="float32")[0]
        assert len(audio) == len(decode) and not np.array_equal(audio, decode), edit
