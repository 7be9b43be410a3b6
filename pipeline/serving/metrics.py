"""The service's Prometheus metrics (``GET /metrics``, text format 0.0.4).

Every figure is per service, summed over its worker processes: with ``serve.workers`` above one, the
metrics live in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, set before the
workers start) and a scrape reads them all, whichever worker answers it.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

__all__ = ["ServeMetrics", "CONTENT_TYPE_LATEST"]
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class ServeMetrics:
    """The metrics of one service process, registered in a registry of its own (two services in one process,
    as in tests, never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("tlops_serve_requests", "HTTP requests to /predict by status code", ["status"],
                                registry=r)
        self.latency = Histogram("tlops_serve_request_seconds", "seconds from a /predict request's arrival to its "
                                 "answer", buckets=_LATENCY_BUCKETS, registry=r)
        self.images = Counter("tlops_serve_images", "images received, by outcome (predicted or refused)",
                              ["outcome"], registry=r)
        self.refusals = Counter("tlops_serve_refusals", "images refused, by the gate's rule", ["rule"], registry=r)
        self.predictions = Counter("tlops_serve_predictions", "images predicted, by predicted class", ["class"],
                                   registry=r)
        self.confidence = Histogram("tlops_serve_confidence", "top-1 probability of each predicted image",
                                    buckets=_CONFIDENCE_BUCKETS, registry=r)
        self.batch = Histogram("tlops_serve_batch_images", "images per forward pass", buckets=_BATCH_BUCKETS,
                               registry=r)
        self.queue = Gauge("tlops_serve_queue_depth", "requests waiting for the model", registry=r,
                           multiprocess_mode="livesum")
        self.swaps = Counter("tlops_serve_model_swaps", "champion moves this service swapped in", registry=r)
        self.load_failures = Counter("tlops_serve_model_load_failures", "models that failed to load or check "
                                     "(the service kept the one it had)", registry=r)
        self.sampled = Counter("tlops_serve_sampled_images", "images kept for the drift check", registry=r)
        self.model = Gauge("tlops_serve_model_info", "1 for the model answering now", ["version", "sha256", "runtime"],
                           registry=r, multiprocess_mode="liveall")

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's metrics, or every worker's in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
