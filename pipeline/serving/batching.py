"""Requests batched together under load: a bounded queue in front of one model thread.

Each request is one job (its images, already preprocessed for the model it was admitted with). The batcher
takes the oldest job, waits at most ``max_wait_s`` for more, and runs up to ``max_batch`` images of jobs for the
same model in one forward pass on its own thread, so the event loop keeps accepting and decoding requests while
the model computes; under load the jobs that arrive during one pass form the next. A job is never split
(every image of a request is answered by one model), and one bigger than ``max_batch`` runs alone. When
``max_queue`` jobs wait, :meth:`Batcher.submit` refuses the next (the service answers 503).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.serving.metrics import ServeMetrics
from pipeline.serving.runtime import ServedModel

__all__ = ["Batcher", "QueueFull"]
QueueFull = asyncio.QueueFull
_POLL_S = 0.0005  # how often a batch that waits for company looks at the queue


@dataclass
class _Job:
    model: ServedModel
    inputs: torch.Tensor  # [n, 3, S, S] preprocessed for ``model``
    answer: asyncio.Future  # -> probabilities [n, C]


class Batcher:
    """Runs jobs in batches on one model thread; :meth:`run` is the loop (a task of the service)."""

    def __init__(self, max_batch: int, max_wait_s: float, max_queue: int, metrics: ServeMetrics):
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.metrics = metrics
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(max_queue)
        self._held: _Job | None = None  # taken from the queue but for the next batch (another model, or too big)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tlops-serve-model")

    def submit(self, model: ServedModel, inputs: torch.Tensor) -> asyncio.Future:
        """Queue a request's images; the future gives their probabilities. Raises QueueFull when the queue is."""
        job = _Job(model, inputs, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        self.metrics.queue.inc()
        return job.answer

    async def run(self) -> None:
        """Form and run batches until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch(loop)
            self.metrics.queue.dec(len(jobs))
            jobs = [job for job in jobs if not job.answer.done()]  # a client that went away is not computed for
            if not jobs:
                continue
            inputs = jobs[0].inputs if len(jobs) == 1 else torch.cat([job.inputs for job in jobs])
            try:
                probs = await loop.run_in_executor(self._thread, jobs[0].model.probabilities, inputs)
            except Exception as err:  # noqa: BLE001 (the requests of this batch get the error; the service goes on)
                for job in jobs:
                    if not job.answer.done():
                        job.answer.set_exception(err)
                continue
            self.metrics.batch.observe(len(inputs))
            for job, part in zip(jobs, np.split(probs, np.cumsum([len(job.inputs) for job in jobs])[:-1])):
                if not job.answer.done():
                    job.answer.set_result(part)

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Job]:
        first = self._held or await self._queue.get()
        self._held = None
        jobs, images = [first], len(first.inputs)
        deadline = loop.time() + self.max_wait_s
        while images < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(_POLL_S)
                continue
            if job.model is not first.model or images + len(job.inputs) > self.max_batch:
                self._held = job
                break
            jobs.append(job)
            images += len(job.inputs)
        return jobs

    def close(self) -> None:
        """Stop the model thread (after the loop task was cancelled)."""
        self._thread.shutdown(wait=True, cancel_futures=True)
