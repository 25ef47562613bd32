"""The one worker pool of the data tooling: run jobs in processes with a progress bar.

Converters (decode -> PNG) and the synthetic generator (render -> DICOM) both hand it a picklable
function and its jobs. One process runs them in place; several use a `ProcessPoolExecutor` started
with fork where available (fork keeps the already-imported modules: importing torch / transformers
again costs seconds per worker). Results come back in job order, so output never depends on which
worker ran a job.

>>> [square for square in map_in_processes(abs, [-1, 2, -3], workers=1, progress=False)]
[1, 2, 3]
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from tqdm.auto import tqdm


def map_in_processes(function: Callable[[Any], Any], jobs: Sequence, *, workers: int = 1, progress: bool = True,
                     description: str = "images", done: int = 0, chunksize: int | None = None) -> Iterator[Any]:
    """Yield `function(job)` for every job, in order, in `workers` processes, with a tqdm bar.

    `done`: jobs finished before this call (e.g. cached images), shown as the bar's starting count.
    `chunksize`: jobs per hand-over to a worker (default: about four hand-overs per worker, at most 16).
    """
    bar = tqdm(total=len(jobs) + done, initial=done, desc=description, unit="img", disable=not progress)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield function(job)
                bar.update()
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        chunksize = chunksize or max(1, min(16, len(jobs) // (4 * workers)))
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for result in pool.map(function, jobs, chunksize=chunksize):
                yield result
                bar.update()
    finally:
        bar.close()


__all__ = ["map_in_processes"]
