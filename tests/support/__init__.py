"""Helpers shared by tests: bad-image generators, local servers."""
