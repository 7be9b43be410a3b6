"""Helpers every stage shares: atomic writes, logging and progress, device choice, seeding, error kinds, S3."""
