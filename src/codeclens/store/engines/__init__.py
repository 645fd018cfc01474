"""Extraction engines: where the shards of an extraction are encoded.

``local`` (the default) encodes shards one after another in this process;
``ray`` maps them over a Ray cluster (:mod:`.ray_engine`, imported only when
asked, needs ``pip install codeclens[ray]``). Both write the same shard
directories, committed by rename under the same deterministic names, and the
driver builds the store from committed shards only, so the engines' stores are
identical and either can resume the other's interrupted run.
"""

ENGINES = ("local", "ray")
