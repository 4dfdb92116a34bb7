"""The shipped conformance cases of dsa/conformance/cases/test_trained_model.py, run by the test suite."""
from dsa.conformance.cases.test_trained_model import *  # noqa: F401,F403
