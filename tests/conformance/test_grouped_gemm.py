"""The shipped conformance cases of dsa/conformance/cases/test_grouped_gemm.py, run by the test suite."""
from dsa.conformance.cases.test_grouped_gemm import *  # noqa: F401,F403
