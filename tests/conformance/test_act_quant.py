"""The shipped conformance cases of dsa/conformance/cases/test_act_quant.py, run by the test suite."""
from dsa.conformance.cases.test_act_quant import *  # noqa: F401,F403
