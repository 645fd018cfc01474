"""File names inside a feature store directory (one place, used by writer and reader)."""

MANIFEST = "manifest.json"
TABLES = "tables.safetensors"
CODES = "codes.npy"
LATENT = "latent.npy"
UTTERANCES = "utterances.parquet"
FRAMES = "frames.parquet"
SHARDS = "shards"
FORMAT_VERSION = 1
