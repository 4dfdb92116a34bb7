"""The shipped conformance cases of dsa/conformance/cases/test_kv_format.py, run by the test suite."""
from dsa.conformance.cases.test_kv_format import *  # noqa: F401,F403
