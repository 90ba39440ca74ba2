"""SHA-256 of every output and gradient of a fixed set of GRU problems, for checking that a
change to the kernels leaves results bitwise unchanged.

Usage:
    GRUFAST_ISA=baseline python tools/kernel_fingerprint.py OUT.json
    python tools/kernel_fingerprint.py OUT.json --compare BEFORE.json

Covers every path the kernels choose between: one sequence (GEMV, and H = 256 split by
hidden units on two threads), B = 3 (OpenBLAS GEMM per step), B = 8 and B = 64 (register
tiled, split by sequences on two threads), both ``linear_before_reset`` variants, float32 and
float64, lengths, reverse, bidirectional two-layer models, training and inference (chunked
input projections), and GRUCell's streaming plan. Each problem runs on one and on two threads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator

import numpy as np
from threadpoolctl import threadpool_limits

import grufast
from grufast._isa import kernels


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _functional(rng: np.random.Generator, T: int, B: int, I: int, H: int, dtype,
                lbr: bool, reverse: bool, ragged: bool) -> Iterator[tuple[str, np.ndarray]]:
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    s = 1 / np.sqrt(H)
    w_ih, w_hh = (rng.uniform(-s, s, (3 * H, n)).astype(dtype) for n in (I, H))
    b_ih, b_hh = (rng.uniform(-s, s, 3 * H).astype(dtype) for _ in range(2))
    lengths = rng.integers(0, T + 1, B) if ragged else None
    kw = dict(lengths=lengths, reverse=reverse, linear_before_reset=lbr)
    y, h_n, _ = grufast.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, **kw)
    yield "infer.y", y
    yield "infer.h_n", h_n
    y, h_n, cache = grufast.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, training=True, **kw)
    yield "train.y", y
    yield "train.h_n", h_n
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh_n = rng.standard_normal(h_n.shape).astype(dtype)
    for name, g in zip(type(grads := grufast.gru_backward(dy, dh_n, cache))._fields, grads):
        if g is not None:
            yield "grad." + name, g
    # dy None (only dh_n) takes the kernels' zero-dy path.
    for name, g in zip(grads._fields, grufast.gru_backward(None, dh_n, cache)):
        if g is not None:
            yield "grad_no_dy." + name, g


def _layer(rng: np.random.Generator, T: int, B: int, I: int, H: int, dtype, lbr: bool,
           ragged: bool) -> Iterator[tuple[str, np.ndarray]]:
    gru = grufast.GRU(I, H, num_layers=2, bidirectional=True, linear_before_reset=lbr,
                      dtype=dtype, seed=int(rng.integers(1 << 30)))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, B) if ragged else None
    y, h_n = gru.eval()(x, lengths=lengths)
    yield "eval.y", y
    yield "eval.h_n", h_n
    gru.train()
    y, h_n = gru(x, lengths=lengths)
    yield "train.y", y
    yield "train.h_n", h_n
    dx, dh0 = gru.backward(rng.standard_normal(y.shape).astype(dtype),
                           rng.standard_normal(h_n.shape).astype(dtype))
    yield "dx", dx
    yield "dh0", dh0
    for name, g in gru.grads.items():
        yield "grads." + name, g


def _cell(rng: np.random.Generator, I: int, H: int, dtype, lbr: bool
          ) -> Iterator[tuple[str, np.ndarray]]:
    cell = grufast.GRUCell(I, H, linear_before_reset=lbr, dtype=dtype,
                           seed=int(rng.integers(1 << 30)))
    h = None
    for t in range(3):  # one sequence: the streaming plan
        h = cell(rng.standard_normal(I).astype(dtype), h)
        yield f"single{t}", h
    hb = cell(rng.standard_normal((4, I)).astype(dtype), None)  # a batch: the general path
    yield "batch", hb


# (T, B, I, H): one sequence by GEMV and by hidden units, OpenBLAS per step (B = 3), the
# tiled GEMM split by sequences (8, 64), and one large enough for OpenBLAS's projection GEMM.
SHAPES = [(9, 1, 16, 256), (12, 1, 24, 64), (10, 3, 20, 48), (11, 8, 24, 128),
          (7, 64, 32, 64), (30, 64, 64, 64)]


def problems() -> Iterator[tuple[str, np.ndarray]]:
    for threads in (1, 2):
        with threadpool_limits(limits=threads):
            rng = np.random.default_rng(14)
            for dtype in (np.float32, np.float64):
                dn = np.dtype(dtype).name
                for lbr in (True, False):
                    for T, B, I, H in SHAPES:
                        for reverse in (False, True):
                            for ragged in (False, True):
                                key = (f"t{threads}/{dn}/lbr{int(lbr)}/fn/T{T}B{B}I{I}H{H}"
                                       f"/rev{int(reverse)}/len{int(ragged)}")
                                for name, a in _functional(rng, T, B, I, H, dtype, lbr,
                                                           reverse, ragged):
                                    yield f"{key}/{name}", a
                    for T, B, I, H in [(6, 1, 16, 256), (8, 3, 12, 32), (9, 8, 16, 128)]:
                        key = f"t{threads}/{dn}/lbr{int(lbr)}/gru/T{T}B{B}I{I}H{H}"
                        for name, a in _layer(rng, T, B, I, H, dtype, lbr, B > 1):
                            yield f"{key}/{name}", a
                    for I, H in [(16, 64), (8, 256)]:
                        for name, a in _cell(rng, I, H, dtype, lbr):
                            yield f"t{threads}/{dn}/lbr{int(lbr)}/cell/I{I}H{H}/{name}", a


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file to write the fingerprints to")
    parser.add_argument("--compare", help="an earlier JSON: report every hash that differs")
    args = parser.parse_args(argv)
    hashes = {name: _digest(a) for name, a in problems()}
    with open(args.out, "w") as f:
        json.dump({"kernels": kernels.__name__, "hashes": hashes}, f, indent=1, sort_keys=True)
    print(f"{kernels.__name__}: {len(hashes)} arrays fingerprinted -> {args.out}")
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        if before["kernels"] != kernels.__name__:
            print(f"warning: comparing {kernels.__name__} with {before['kernels']}")
        old = before["hashes"]
        diff = sorted(k for k in old.keys() | hashes.keys() if old.get(k) != hashes.get(k))
        for k in diff[:20]:
            print("differs:", k)
        print(f"{len(diff)} of {len(old.keys() | hashes.keys())} differ")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
