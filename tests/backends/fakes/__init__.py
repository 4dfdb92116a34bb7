"""Plain-PyTorch stand-ins for vendor kernel functions, written from the vendors' documentation.

Each fake implements what its vendor documents (shapes, index encoding, cache byte layout, scale
format, padding and log-sum-exp conventions) and asserts the documented preconditions (dtypes, head
counts, alignments), so a test that routes an adapter through it checks OUR translation of the HAL
arguments into that documented interface. It says nothing about the vendor kernel itself: that is
what `dsa conformance` on the real hardware is for. Sources are named in each module's docstring.

`loader({"module": namespace, ...})` returns a replacement for a backend's `vendor.load` seam.
"""
from __future__ import annotations


def loader(modules: dict):
    """A `vendor.load` stand-in serving `modules`; any other name fails like a missing library."""

    def load(name: str):
        try:
            return modules[name]
        except KeyError:
            raise ModuleNotFoundError(f"No module named {name!r} (not provided by the test)") from None

    return load
