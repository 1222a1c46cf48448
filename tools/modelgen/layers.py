"""Pure-numpy layers: weight initialisation and float forward passes.

These are the references every builder's ``ModelSpec`` uses. Conventions: a dense layer
is ``(W, b)`` with ``W`` of shape [in, out] and ``y = x @ W + b``; convolution weights
are [out_channels, in_channels, kh, kw] (ONNX/PyTorch layout), activations NCHW.

Public functions: :func:`init_dense`, :func:`init_mlp`, :func:`relu`, :func:`softmax`,
:func:`mlp_forward`, :func:`conv2d_nchw`, :func:`check_mlp_weights`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from edgefleet.tools.modelgen.spec import ModelGenError

Dense = tuple[np.ndarray, np.ndarray]


def init_dense(rng: np.random.Generator, n_in: int, n_out: int) -> Dense:
    """He-scaled normal weights and small biases, float32."""
    w = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_in, n_out)).astype(np.float32)
    b = rng.normal(0.0, 0.1, size=(n_out,)).astype(np.float32)
    return w, b


def init_mlp(sizes: Sequence[int], seed: int = 0) -> list[Dense]:
    """Random weights for an MLP with layer widths ``sizes`` (input first).

    Raises:
        ModelGenError: fewer than two sizes or a non-positive size.
    """
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ModelGenError(f"an MLP needs at least two positive sizes, got {tuple(sizes)}")
    rng = np.random.default_rng(seed)
    return [init_dense(rng, int(a), int(b)) for a, b in itertools.pairwise(sizes)]


def check_mlp_weights(layers: Sequence[Dense]) -> list[Dense]:
    """Validate chained dense shapes and return float32 copies.

    Raises:
        ModelGenError: empty, wrong ranks or mismatched widths.
    """
    if not layers:
        raise ModelGenError("an MLP needs at least one layer")
    out: list[Dense] = []
    prev: int | None = None
    for i, (w, b) in enumerate(layers):
        w32 = np.asarray(w, dtype=np.float32)
        b32 = np.asarray(b, dtype=np.float32)
        if w32.ndim != 2 or b32.shape != (w32.shape[1],):
            raise ModelGenError(f"layer {i}: W must be [in, out] and b [out], got "
                                f"{w32.shape} and {b32.shape}")
        if prev is not None and w32.shape[0] != prev:
            raise ModelGenError(f"layer {i}: takes {w32.shape[0]} inputs, previous gives {prev}")
        prev = w32.shape[1]
        out.append((w32.copy(), b32.copy()))
    return out


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def mlp_forward(layers: Sequence[Dense], x: np.ndarray, *, apply_softmax: bool) -> np.ndarray:
    """ReLU between layers, none after the last; optional softmax on the output."""
    h = np.asarray(x, dtype=np.float64)
    for i, (w, b) in enumerate(layers):
        h = h @ w.astype(np.float64) + b.astype(np.float64)
        if i < len(layers) - 1:
            h = relu(h)
    if apply_softmax:
        h = softmax(h)
    return h.astype(np.float32)


def conv2d_nchw(x: np.ndarray, w: np.ndarray, b: np.ndarray, *, pad: int) -> np.ndarray:
    """Stride-1 2-D convolution (cross-correlation) with symmetric zero padding."""
    n, c, h, wd = x.shape
    oc, ic, kh, kw = w.shape
    if ic != c:
        raise ModelGenError(f"conv expects {ic} input channels, got {c}")
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    out = np.zeros((n, oc, oh, ow), dtype=np.float64)
    w64 = w.astype(np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + oh, j : j + ow]  # [n, c, oh, ow]
            out += np.einsum("nchw,oc->nohw", patch, w64[:, :, i, j])
    return out + b.astype(np.float64)[None, :, None, None]
