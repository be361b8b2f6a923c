"""The model side of crawl2model: torch, safetensors and tokenizers (plus gguf and peft for export
and LoRA), nothing of the pipeline, no Prefect, no MLflow (an import contract in pyproject.toml
checks it), so `python -m model.train` and `python -m model.generate` run with this folder alone.

    model.config     ModelConfig, PRESETS (tiny, small, 124m, 350m), parameter and FLOP counts
    model.llama      Llama (decoder), KVCache, hf_name / gguf_name (state_dict key mapping)
    model.tokenizer  the tokenizer at run time: special tokens, chat template, load, save, render
    model.shards     the token shard format and its reader (ShardSet); data.py draws batches from it
    model.generate   generate(model, prompts, max_new_tokens, ...): batched sampling with the cache
    model.settings   the trainers' settings (TrainConfig, PosttrainConfig, RlConfig): the one schema
                     of the pipeline's pretrain, sft, dpo and rl config keys
    model.train      the pretraining loop (python -m model.train), checkpoint.py
    model.posttrain  SFT and DPO (dpo.py, chat_data.py, lora.py); grpo.py: RL on verifiable rewards
    model.hf         Hugging Face folder export and import
    model.to_gguf    GGUF export (gguf package; k-quants through llama.cpp), llamacpp.py runs it
    model.quantize   weight-only int8 / int4 for crawl2model's own inference
    model.ollama     Ollama Modelfile next to a GGUF
    model.variants   every export variant built and measured the same way (export flow, bench)
"""
