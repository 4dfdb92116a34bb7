"""Conformance: every (HAL op x provider available here) against the fp64 oracle in tests/reference."""
