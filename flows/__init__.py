"""Prefect flows: the pipeline as a user reads it (one module per stage group), and the CLI."""
