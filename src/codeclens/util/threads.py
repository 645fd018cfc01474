"""Work run side by side in Python threads, each thread with the torch settings of its caller.

The count-table probe path spends its time in numpy and torch kernels that release the GIL
(bincounts, parquet decoding, the fits' products), one core at a time: two independent pieces of
it (a task's probes and its controls; the classification and the regression tasks) take about
the time of the longer one on two cores.

Torch's intra-op thread count is a per-thread setting here (OpenMP's and MKL's are per thread; a
new thread starts from the last value set anywhere), so each worker first takes the caller's:
a program then runs with the threads it would have had in the caller, and
:func:`codeclens.analyses.probes.linear.threads_for` inside it changes that worker's setting only.
Results are therefore those of running the pieces one after the other (``tests/test_table_batch.py``,
``tests/test_probes_side_by_side.py``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def cpu_workers(asked: int = 0) -> int:
    """Threads for side-by-side work: ``asked``, or (0) the CPUs this process may use, at most 2
    (the pieces come in pairs)."""
    if asked:
        return asked
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return min(2, n)


def side_by_side(calls: Sequence[Callable[[], T]], workers: int) -> list[T]:
    """Every ``call()``, in order; at the same time in ``workers`` threads when there are two or more
    of each, else one after the other here. The first exception is raised once all have ended."""
    if workers < 2 or len(calls) < 2:
        return [c() for c in calls]
    import torch

    n = torch.get_num_threads()

    def run(call: Callable[[], T]) -> T:
        torch.set_num_threads(n)
        return call()

    with ThreadPoolExecutor(min(workers, len(calls)), thread_name_prefix="codeclens-side") as ex:
        futures = [ex.submit(run, c) for c in calls]
    return [f.result() for f in futures]
