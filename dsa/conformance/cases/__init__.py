"""The conformance cases: pytest modules run by `dsa conformance` (in-process) and by the test suite."""
