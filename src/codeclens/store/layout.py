"""File names of a feature store directory and its siblings (one place, used by writer and reader)."""

MANIFEST = "manifest.json"
TABLES = "tables.safetensors"
CODES = "codes.npy"
LATENT = "latent.npy"
UTTERANCES = "utterances.parquet"
FRAMES = "frames.parquet"
#: Per-utterance input scales of codecs whose decode multiplies them back (EnCodec 48 kHz's
#: per-chunk RMS): columns utt (row of utterances.parquet), chunk, scale. Absent otherwise.
SCALES = "scales.parquet"
SHARDS = "shards"
FORMAT_VERSION = 1


def lock_path(out):
    """Lock held by the extraction writing store ``out`` (beside it, so it survives a swap)."""
    return out.parent / f".{out.name}.lock"


def staging_path(out, config_hash: str):
    """Where a store replacing ``out`` is built (per configuration, so it resumes)."""
    return out.parent / f".{out.name}.build-{config_hash}"


def retired_path(out):
    """Where the replaced store waits during the swap."""
    return out.parent / f".{out.name}.old"
