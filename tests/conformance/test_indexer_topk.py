"""The shipped conformance cases of dsa/conformance/cases/test_indexer_topk.py, run by the test suite."""
from dsa.conformance.cases.test_indexer_topk import *  # noqa: F401,F403
