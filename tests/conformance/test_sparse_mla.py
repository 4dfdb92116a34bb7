"""The shipped conformance cases of dsa/conformance/cases/test_sparse_mla.py, run by the test suite."""
from dsa.conformance.cases.test_sparse_mla import *  # noqa: F401,F403
