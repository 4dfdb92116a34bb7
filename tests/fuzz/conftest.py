"""The hypothesis settings of the fuzz tests: fast and reproducible by default (CI), larger on request.

    DSA_FUZZ_EXAMPLES=1000 pytest tests/fuzz      # 20x the default 50 examples per property
    DSA_FUZZ_DERANDOMIZE=0 pytest tests/fuzz      # fresh random examples instead of the fixed sequence

Every example has a 2 s deadline: a parser that hangs on an input fails, it does not stall CI.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "dsa-fuzz",
    max_examples=int(os.environ.get("DSA_FUZZ_EXAMPLES", "50")),
    deadline=2000,
    derandomize=os.environ.get("DSA_FUZZ_DERANDOMIZE", "1") != "0",
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("dsa-fuzz")
