"""The shipped conformance cases of dsa/conformance/cases/test_transformers_oracle.py, run by the test suite."""
from dsa.conformance.cases.test_transformers_oracle import *  # noqa: F401,F403
