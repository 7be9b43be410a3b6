"""Prefect flows: thin wiring over pipeline/ (one task per stage; the work lives in pipeline/)."""
