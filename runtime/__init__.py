"""dsa-runtime: one DeepSeek-V3.2 graph, many backends.

The package layout follows ../DESIGN: `runtime.ops` defines the hardware abstraction layer (HAL),
`runtime.registry` holds the providers of each op, `runtime.profile` / `runtime.plan` choose them,
`runtime.engine` runs generation and `runtime.cli` is the `dsa` command.
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"

__all__ = ["REPO_ROOT", "CONFIG_DIR", "LLM"]


def __getattr__(name):  # `from runtime import LLM` without making `import runtime` load torch
    if name == "LLM":
        from runtime.llm import LLM

        return LLM
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
