"""dsa-runtime: one DeepSeek-V3.2 graph (MLA + DeepSeek Sparse Attention + MoE), many backends.

The layers, bottom to top (import-linter contracts in pyproject.toml keep them so):
  dsa.errors                      the error types
  dsa.hal                         op contracts, the torch.library seam, provider registry, OpSet, kv_format
  dsa.model | dsa.backends        the shared graph | the providers of the ops
  dsa.io | dsa.planning | dsa.dist  checkpoints + tokenizer | profiles + planner | launch + process groups
  dsa.engine                      EngineArgs, the generation engine, the LLM API
  dsa.conformance | dsa.bench     shipped tools: fp64 oracle + cases; benchmarks
  dsa.cli                         the `dsa` command
`dsa/configs/` is package data: device profiles and the built-in models.
"""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"

__all__ = ["CONFIG_DIR", "PACKAGE_DIR", "LLM", "EngineArgs"]


def __getattr__(name):  # `from dsa import LLM` without making `import dsa` load torch
    if name == "LLM":
        from dsa.engine.llm import LLM

        return LLM
    if name == "EngineArgs":
        from dsa.engine.args import EngineArgs

        return EngineArgs
    raise AttributeError(f"module 'dsa' has no attribute {name!r}")
