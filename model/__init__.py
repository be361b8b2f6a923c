"""The model side of crawl2model (torch only, no Prefect, no MLflow import):

    model.config     ModelConfig, PRESETS (tiny, small, 124m, 350m), parameter and FLOP counts
    model.llama      Llama (decoder), KVCache, hf_name / gguf_name (state_dict key mapping)
    model.generate   generate(model, prompts, max_new_tokens, ...): batched sampling with the cache
    model.train      the pretraining loop (python -m model.train), checkpoint.py, data.py
    model.hf         Hugging Face folder export and import
    model.to_gguf    GGUF export (gguf package; k-quants through llama.cpp), llamacpp.py runs it
    model.quantize   weight-only int8 / int4 for crawl2model's own inference
    model.ollama     Ollama Modelfile next to a GGUF
    model.variants   every export variant built and measured the same way (export flow, bench)
"""
