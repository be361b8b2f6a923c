"""Pipeline stages: one module per stage, each a plain core (testable without Prefect or
MLflow) plus, where it runs as its own Prefect task, a thin `@task` wrapper."""
