"""Input generators shared by the fuzz tests: any JSON value, awkward numbers, and "near-valid" documents
(a shipped file with one field replaced)."""
from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import strategies as st

AWKWARD_NUMBERS = [0, -1, 1, 2, 3, 128, 127, 1 << 31, 1 << 63, 10**30, 10**300, 0.0, -0.0, 0.5, 1.5, 128.0, 1e-300,
                   1e300, -1e300, math.nan, math.inf, -math.inf, True, False]

numbers = st.one_of(
    st.sampled_from(AWKWARD_NUMBERS),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict (the leaves and the sub-mappings themselves)."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            out.extend(paths(v, prefix + (k,)))
    return out


@st.composite
def near_valid(draw, doc: dict, values=json_values) -> dict:
    """`doc` with one field (at any depth) replaced by a random value, or deleted, or a new key added."""
    doc = copy.deepcopy(doc)
    path = draw(st.sampled_from(paths(doc)))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(values)
    elif action == "delete":
        del parent[path[-1]]
    else:
        parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return doc
