"""The pytest plugin of the conformance cases (loaded by `dsa conformance` and by tests/conftest.py).

`--provider NAME` (repeatable) restricts the cases to those providers. A case that takes a `provider`
argument and carries `@pytest.mark.op("<hal op>")` runs once per provider: by default every known
provider name plus any other provider registered for that op; a provider that has not registered the
op here is reported as SKIPPED with the reason, never passed silently.
"""
from __future__ import annotations

import os

# The Triton interpreter does its tile math in numpy; on 2 cores a 2-thread OpenBLAS matmul of a small
# tile costs ~1000x a single-threaded one. Must be set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Without a CUDA/ROCm GPU, Triton kernels run in Triton's CPU interpreter (on CPU tensors). Triton reads
# this when a kernel is defined, so it is set here, before any case imports dsa.backends.triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

NOT_REGISTERED = "has not registered op"  # part of the skip reason below; the runner recognises it


def pytest_addoption(parser):
    parser.addoption(
        "--provider",
        action="append",
        default=[],
        metavar="NAME",
        help="run conformance cases only for this HAL-op provider (repeatable); default: all",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "op(name): the HAL op a conformance case checks (parametrizes `provider`)")


def pytest_generate_tests(metafunc):
    if "provider" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("op")
    if marker is None:
        raise pytest.UsageError(f"{metafunc.definition.nodeid} takes `provider` but has no @pytest.mark.op(...)")
    from dsa.hal import registry

    op = marker.args[0]
    registered = registry.providers(op)
    names = metafunc.config.getoption("provider") or [
        *registry.KNOWN_PROVIDERS,
        *(name for name in registered if name not in registry.KNOWN_PROVIDERS),
    ]
    params = []
    for name in names:
        marks = []
        if name not in registered:
            where = registry.KNOWN_PROVIDERS.get(name, "no known backend package")
            marks.append(pytest.mark.skip(reason=f"provider {name!r} {NOT_REGISTERED} {op!r} here "
                                                 f"(backend: {where}; absent or failed to import)"))
        params.append(pytest.param(name, id=name, marks=marks))
    metafunc.parametrize("provider", params)
