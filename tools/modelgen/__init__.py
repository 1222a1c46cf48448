"""Builders for small, real model files (ONNX and TFLite) made from numpy weights.

Used by the tests, the benchmarks and the demo: nothing here downloads anything.
"""
