"""Data in: sources, tar shards + manifest, deterministic splits, corruptions (see docs/ingest.md)."""
