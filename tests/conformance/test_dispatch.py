"""The shipped conformance cases of dsa/conformance/cases/test_dispatch.py, run by the test suite."""
from dsa.conformance.cases.test_dispatch import *  # noqa: F401,F403
