"""`dsa conformance`: the independent fp64 oracle (reference/), tolerances, inputs, the cases (cases/) and the
runner that certifies providers with them. Shipped in the wheel so an installed `dsa` can certify hardware."""
