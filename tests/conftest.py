"""Shared pytest setup: the conformance plugin (`--provider NAME`, the `op` marker, the Triton interpreter
without a GPU), as `dsa conformance` loads it."""
pytest_plugins = ["dsa.conformance.plugin"]
