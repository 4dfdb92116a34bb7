"""The shipped conformance cases of dsa/conformance/cases/test_fp8_linear.py, run by the test suite."""
from dsa.conformance.cases.test_fp8_linear import *  # noqa: F401,F403
