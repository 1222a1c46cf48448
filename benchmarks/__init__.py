"""edgefleet's performance goals, measured: ``python -m benchmarks [--quick]``.

Not part of the installed package and not a test: timing goals live here, and each
figure is printed beside its goal with PASS or MISS (see docs/benchmarks.md).
"""
