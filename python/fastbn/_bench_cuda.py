"""``python -m fastbn bench --device cuda``: fastbn's CUDA kernels against PyTorch's CUDA batch norm (cuDNN where
PyTorch picks it) and against the device-to-device copy bandwidth, timed with CUDA events. Needs PyTorch with
CUDA for allocation and timing (the kernels themselves take any CUDA array)."""

from __future__ import annotations

import datetime
import json
import sys

import numpy as np

import fastbn

from ._bench_common import TRAFFIC, Result, format_table
from ._bench_common import cases as _cases


def _batch_ms(torch, fn, n: int) -> float:
    """CUDA-event milliseconds of n calls in a row."""
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b)


def _time(torch, fn, repeat: int, warmup: int) -> float:
    """Median milliseconds per call from CUDA events over batches of calls lasting >= 1 ms."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    n = 1
    while _batch_ms(torch, fn, n) < 1.0 and n < 4096:
        n *= 2
    return float(np.median([_batch_ms(torch, fn, n) / n for _ in range(repeat)]))


def copy_bandwidth(torch, repeat: int) -> float:
    src = torch.randn(256 << 18, device="cuda")  # 256 MiB
    dst = torch.empty_like(src)
    ms = _time(torch, lambda: dst.copy_(src), repeat, 3)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def _run_case(torch, args, shape, layout, dtype, bw):
    eps = 1e-5
    tdt = torch.float32 if dtype == "float32" else torch.float64
    x = torch.randn(shape, dtype=tdt, device="cuda")
    if layout == "nhwc":  # channels last at any rank: C the innermost dimension in memory
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    c = shape[1]
    w = torch.rand(c, dtype=tdt, device="cuda") + 0.5
    b = torch.randn(c, dtype=tdt, device="cuda")
    rm, rv = torch.zeros(c, dtype=tdt, device="cuda"), torch.ones(c, dtype=tdt, device="cuda")
    dy = torch.randn_like(x)
    y, dx = torch.empty_like(x), torch.empty_like(x)
    _, mean, var = fastbn.batch_norm_train(x, w, b)
    xr = x.clone().requires_grad_(True)
    wr, br = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    yr = torch.nn.functional.batch_norm(xr, None, None, wr, br, training=True, eps=eps)
    ours = {
        "train": lambda: fastbn.batch_norm_train(x, w, b, eps=eps, out=y),
        "infer": lambda: fastbn.batch_norm_infer(x, mean, var, w, b, eps=eps, out=y),
        "backward": lambda: fastbn.batch_norm_backward(dy, x, mean, var, w, eps=eps, out=dx),
    }
    fresh = {
        "train": lambda: fastbn.batch_norm_train(x, w, b, eps=eps),
        "infer": lambda: fastbn.batch_norm_infer(x, mean, var, w, b, eps=eps),
        "backward": lambda: fastbn.batch_norm_backward(dy, x, mean, var, w, eps=eps),
    }
    theirs = {
        "train": lambda: torch.nn.functional.batch_norm(x, rm, rv, w, b, training=True, eps=eps),
        "infer": lambda: torch.nn.functional.batch_norm(x, rm, rv, w, b, training=False, eps=eps),
        "backward": lambda: torch.autograd.grad(yr, (xr, wr, br), dy, retain_graph=True),
    }
    results = []
    for pass_ in args.passes:
        t_ours = _time(torch, ours[pass_], args.repeat, args.warmup)
        t_fresh = _time(torch, fresh[pass_], args.repeat, args.warmup)
        t_torch = _time(torch, theirs[pass_], args.repeat, args.warmup)
        nbytes = x.numel() * x.element_size()
        r = Result(
            shape="x".join(map(str, shape)),
            layout=layout,
            pass_=pass_,
            dtype=dtype,
            threads=0,
            mbytes=nbytes / 1e6,
            fastbn_ms=t_ours,
            fresh_ms=t_fresh,
            torch_ms=t_torch,
        )
        r.gbs = TRAFFIC[pass_] * nbytes / (t_ours * 1e-3) / 1e9
        r.roofline = r.gbs / bw
        r.speedup = t_torch / t_ours
        r.fresh_speedup = t_torch / t_fresh
        results.append(r)
        print(f"  {r.shape} {layout} {pass_} {dtype}: {t_ours:.3f} ms, torch {t_torch:.3f} ms", file=sys.stderr)
    return results


def run(args) -> int:
    try:
        import torch
    except ImportError:
        print("fastbn bench --device cuda needs PyTorch with CUDA for allocation and timing", file=sys.stderr)
        return 1
    if not (torch.cuda.is_available() and fastbn.cuda.is_available()):
        print(
            f"fastbn bench --device cuda: no usable GPU (torch sees one: {torch.cuda.is_available()}, "
            f"fastbn: {fastbn.cuda.is_available()})",
            file=sys.stderr,
        )
        return 1
    bw = copy_bandwidth(torch, args.repeat)
    results = []
    for shape, layout, dtype in _cases(args):
        results += _run_case(torch, args, shape, layout, dtype, bw)
        torch.cuda.empty_cache()
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu": fastbn.cuda.device_description(0),
            "cores": torch.cuda.get_device_properties(0).multi_processor_count,
        },
        "fastbn": fastbn.build_info(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "copy_bandwidth_gbs": bw,
        "copy_bandwidth_end_gbs": copy_bandwidth(torch, args.repeat),
        "repeat": args.repeat,
        "results": [r.__dict__ for r in results],
    }
    print(format_table(report, 256 << 20).replace("streaming copy", "device-to-device copy").replace("cores", "SMs"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0
