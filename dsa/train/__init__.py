"""Training a tiny DeepSeek-V3.2-architecture model on CPU (issue 14), to become the built-in model.

Modules:
- `corpus`: the training corpus (Python's standard library sources, PSF License), its pin and held-out split
- `tokenizer`: training the byte-level BPE tokenizer and writing its files (loading stays in dsa.io.tokenizer)
- `data`: the encoded token stream (cached as safetensors), training batches and held-out evaluation windows
- `graph`: the model graph for training
- `recipe`: the training recipe (hyperparameters, schedule)
- `command`: the training command
"""
