"""The pipeline as a Prefect flow (pipeline.py); installed with bigdeep (pyproject.toml)."""
