"""The shared DeepSeek-V3.2 graph: plain single-device PyTorch; every hardware-specific op goes
through the HAL (`dsa.hal.OpSet`), never a backend import.

    config = ModelConfig.from_file("dsa/configs/models/tiny")
    model = DeepseekV32(config, OpSet.single("torch"), dtype=torch.float32)
    model.load_hf_state_dict(random_checkpoint(config, seed=0, dtype=torch.float32))
    cache = PagedCache(config, num_blocks=8, page_size=16, dtype=torch.float32)
    batch = Batch.build(new_lens=[5], context_lens=[0], block_tables=[[0]], page_size=16)
    logits = model(input_ids, batch, cache)          # [5, vocab] fp32
"""
from dsa.model.cache import Batch, PagedCache
from dsa.model.config import ModelConfig
from dsa.model.transformer import DeepseekV32
from dsa.model.weights import hf_tensor_specs, random_checkpoint

__all__ = [
    "Batch",
    "DeepseekV32",
    "ModelConfig",
    "PagedCache",
    "hf_tensor_specs",
    "random_checkpoint",
]
