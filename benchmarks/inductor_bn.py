"""Inductor's own batch-norm code against fastbn's kernels, on the bench shapes: torch.compile of
``F.batch_norm`` (training, batch statistics; and eval) against ``fastbn.torch.batch_norm`` in eager mode, forward
only and forward + backward, float32, interleaved sample by sample in one process.

    python benchmarks/inductor_bn.py [--threads 2] [--repeat 11]

Prints per case the medians (ms) and the median of the paired ratios Inductor / fastbn (> 1: fastbn faster),
then the time Inductor's CPU code takes to write a ReLU mask (see mask_store).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as TF

import fastbn
import fastbn.torch as ft
from fastbn.bench import int_at_least

SHAPES = [
    ((64, 128, 56, 56), False),
    ((64, 128, 56, 56), True),
    ((256, 256, 14, 14), False),
    ((256, 256, 14, 14), True),
    ((8192, 1024), False),
    ((16, 512, 5, 5), False),
    ((32, 64, 8, 8), False),
]


def ind(x, w, b, rm, rv, training):
    return TF.batch_norm(x, rm, rv, w, b, training=training, momentum=0.1, eps=1e-5)


def one_shape(shape, cl: bool, repeat: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    w, b = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
    rm, rv = torch.zeros(c), torch.ones(c)
    xg = x.clone().requires_grad_()
    dy = torch.randn_like(x)
    torch._dynamo.reset()
    compiled = torch.compile(ind, dynamic=False)
    wd, bd = w.detach(), b.detach()
    cases = {
        "train fwd": (
            lambda: compiled(x, wd, bd, rm, rv, True),
            lambda: ft.batch_norm(x, rm, rv, wd, bd, training=True),
        ),
        "eval fwd": (
            lambda: compiled(x, wd, bd, rm, rv, False),
            lambda: ft.batch_norm(x, rm, rv, wd, bd, training=False),
        ),
        "train fwd+bwd": (
            lambda: compiled(xg, w, b, rm, rv, True).backward(dy),
            lambda: ft.batch_norm(xg, rm, rv, w, b, training=True).backward(dy),
        ),
    }
    memory = "NHWC" if cl else ("NC" if len(shape) == 2 else "NCHW")
    for name, (fi, ff) in cases.items():
        for _ in range(3):
            fi(), ff()
        ti, tf, ratio = [], [], []
        for _ in range(repeat):
            s = time.perf_counter()
            fi()
            t1 = time.perf_counter()
            ff()
            t2 = time.perf_counter()
            ti.append(t1 - s)
            tf.append(t2 - t1)
            ratio.append((t1 - s) / (t2 - t1))
        print(
            f"{'x'.join(map(str, shape)):16s} {memory:6s} {name:14s} {statistics.median(ti) * 1e3:11.3f} "
            f"{statistics.median(tf) * 1e3:9.3f} {statistics.median(ratio):14.2f}x"
        )


def mask_store(repeat: int) -> None:
    """Why a converted model can lose to stock under torch.compile: where the partitioner saves a ReLU's mask
    for the backward (a batch norm -> ReLU -> max-pool stem, whose ReLU output nothing else keeps), Inductor's
    CPU code writes that bool tensor many times slower than a float tensor of the same shape. Stock batch norm
    is decomposed, so the mask is recomputed from the saved input instead; fastbn's operator is opaque (its
    fused ReLU, convert(model, fuse=True), keeps y and needs no mask)."""
    x = torch.randn(16, 64, 80, 80, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    cases = {
        "compiled relu(x) <= 0 (bool)": torch.compile(lambda t: t.relu() <= 0, dynamic=False),
        "compiled relu(x) + 1 (float)": torch.compile(lambda t: t.relu() + 1, dynamic=False),
        "eager relu(x) <= 0 (bool)": lambda t: t.relu() <= 0,
    }
    print(f"\nInductor's CPU code for a saved ReLU mask, 16x64x80x80 float32 in, median of {repeat}:")
    for name, f in cases.items():
        for _ in range(3):
            f(x)
        ts = []
        for _ in range(repeat):
            s = time.perf_counter()
            f(x)
            ts.append(time.perf_counter() - s)
        print(f"  {name:30s} {statistics.median(ts) * 1e3:8.3f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int_at_least(1), default=2, help="threads for both (default 2)")
    p.add_argument("--repeat", type=int_at_least(1), default=11, help="samples per case (default 11)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    fastbn.set_num_threads(a.threads)
    torch._dynamo.config.recompile_limit = 64  # one graph per shape and pass, all Inductor's
    print(f"torch {torch.__version__}, fastbn {fastbn.__version__}, {a.threads} threads, float32, median of {a.repeat}")
    print(f"{'shape':16s} {'memory':6s} {'pass':14s} {'inductor ms':>11s} {'fastbn ms':>9s} {'inductor/fastbn':>15s}")
    for shape, cl in SHAPES:
        one_shape(shape, cl, a.repeat)
    mask_store(a.repeat)


if __name__ == "__main__":
    main()
