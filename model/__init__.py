"""The model side of crawl2model (torch only, no Prefect): the Llama-style decoder, trainer,
post-training and export arrive with the pretraining issue; curation does not use it."""
