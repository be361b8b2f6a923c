"""crawl2model: a web crawl in, a trained, aligned, quantized language model out.

The package holds what every stage shares: the typed config (`crawl2model.config`) and the
process environment for the embedded Prefect and MLflow (`crawl2model.runtime`). The stages live
in the top-level packages `tasks/`, `warehouse/`, `model/` and `flows/` (see DESIGN.md).
"""

__version__ = "0.1.0"
