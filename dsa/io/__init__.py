"""Checkpoints, tokenizers and chat templates: reading (checked before any tensor data) and writing HF layouts;
where a model comes from (model_source)."""
