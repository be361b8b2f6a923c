"""The model side of crawl2model (torch only, no Prefect, no MLflow, no transformers import):

    model.config    ModelConfig, PRESETS (tiny, small, 124m, 350m), parameter and FLOP counts
    model.llama     Llama (decoder), KVCache, hf_name / gguf_name (state_dict key mapping)
    model.generate  generate(model, prompts, max_new_tokens, ...): batched sampling with the cache

The trainer, post-training and export arrive with later issues; curation does not use it."""
