"""Serving a trained model over HTTP: ``tlops serve`` (server.py starts it, app.py answers the requests,
runtime.py loads and checks the model, batching.py runs requests together, source.py follows the registry's
champion, readiness.py makes /ready answer for every worker process, samples.py keeps what it saw for the drift
check, metrics.py counts it all for Prometheus)."""
