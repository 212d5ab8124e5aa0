"""``python -m fastbn bench``: fastbn against PyTorch and NumPy, and against the machine's copy bandwidth.

Batch norm is memory-bound, so the yardstick is a copy: B = 2 * S_copy / t_copy for a multithreaded copy (with
streaming stores) of a large buffer, measured in the same run. Each pass has a minimal traffic (bytes it must
move): training forward and inference read x and write y (2S), backward reads x and dy and writes dx (3S).
The roofline fraction (minimal traffic / t) / B is 1.0 at the limit. Since a tensor that fits a large
last-level cache can beat a copy of a buffer that does not, each case also gets a second yardstick: the same
streaming copy of a buffer of S bytes, timed alongside ("vs S-copy": minimal traffic / t over 2S / t_copy).

Timings are medians of ``--repeat`` samples after warm-ups, all in this process; fastbn, PyTorch and NumPy are
interleaved sample by sample, in a rotating order, so that drifts of a shared machine hit them alike. Each sample
runs the call enough times to last at least a millisecond, so tiny shapes are timed too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import asdict

import numpy as np

import fastbn

from . import _bench_cuda
from ._bench_common import (
    FLOORS,
    READS,
    TRAFFIC,
    YARDSTICK_OF_FLOOR,
    Result,
    cases,
    format_table,
    machine,
    paired,
    time_interleaved,
    time_samples,
)

DEFAULT_SHAPES = ["64x128x56x56", "256x256x14x14", "8192x1024", "128x64x1024", "32x64x8x8", "16x512x5x5", "64x256"]
DTYPES = ["float32", "float64"]
ALL_DTYPES = ["float32", "float64", "bfloat16", "float16"]
DEFAULT_REPEAT = 11
# --quick: one medium tensor in both layouts, a 2-D one and a tiny one, float32, few samples: a smoke run of
# every code path of the full run in a few seconds, too short for its numbers to mean much.
QUICK_SHAPES = ["32x64x28x28", "4096x256", "32x64x8x8"]
QUICK_DTYPES = ["float32"]
QUICK_REPEAT = 5
PASSES = ["train", "infer", "backward"]
COPY_BYTES = 256 << 20
LLC_NOT_KEPT_BYTES = 8 << 20  # half the most the probe times (cpu/dispatch.cpp, kProbeMaxBytes)


def parse_shape(text: str):
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is written like 64x128x56x56, got {text!r}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape needs at least 2 dimensions >= 1, got {text!r}")
    return shape


def shape_list(text: str):
    """An argparse type: comma-separated shapes, e.g. 64x128x56x56,8192x1024."""
    return [parse_shape(t) for t in text.split(",")]


def case_list(layouts):
    """An argparse type for the benchmark scripts: comma-separated SHAPE/LAYOUT, e.g. 8x64x56x56/nhwc,64x256/nc."""

    def parse(text: str):
        cases = []
        for item in (s.strip() for s in text.split(",") if s.strip()):
            shape_text, _, layout = item.partition("/")
            shape = parse_shape(shape_text)
            if layout not in layouts:
                raise argparse.ArgumentTypeError(f"a case is SHAPE/LAYOUT, LAYOUT one of {', '.join(layouts)}; "
                                                 f"got {item!r}")  # fmt: skip
            if (layout == "nc") != (len(shape) == 2):
                raise argparse.ArgumentTypeError(
                    f"layout nc is for 2-D shapes, nchw and nhwc for 3-D or more; got {item!r}"
                )
            cases.append((shape, layout))
        if not cases:
            raise argparse.ArgumentTypeError(f"expected at least one SHAPE/LAYOUT case, got {text!r}")
        return cases

    return parse


def comma_list(choices):
    def parse(text: str):
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return items

    return parse


def thread_list(text: str):
    try:
        items = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"threads are a comma-separated list of ints, got {text!r}") from None
    if not items or min(items) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return items


def int_at_least(low: int, why: str = ""):
    """An argparse type: an integer >= low; ``why`` is added to the message when it is not."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}{why}, got {text!r}")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the bench options to ``p``. Options that ``--quick`` presets default to None here and are filled in
    by :func:`apply_preset`, so that a value given on the command line wins over the preset."""
    p.add_argument(
        "--shapes",
        type=shape_list,
        default=None,
        help="comma-separated shapes, channels on axis 1; 2-D shapes are (N, C) "
        f"(default: {','.join(DEFAULT_SHAPES)}; with --quick: {','.join(QUICK_SHAPES)})",
    )
    p.add_argument(
        "--passes",
        type=comma_list(PASSES),
        default=PASSES,
        help=f"comma-separated passes to time, from {', '.join(PASSES)} (default: {','.join(PASSES)})",
    )
    p.add_argument(
        "--layouts",
        type=comma_list(["nchw", "nhwc"]),
        default=["nchw", "nhwc"],
        help="memory layouts of the shapes with spatial dimensions: nchw, nhwc (channels last) or both "
        "(default: nchw,nhwc)",
    )
    p.add_argument(
        "--dtypes",
        type=comma_list(ALL_DTYPES),
        default=None,
        help=f"comma-separated dtypes from {', '.join(ALL_DTYPES)} (halves need ml_dtypes for bfloat16); the "
        f"halves are reported against float32 when it is listed too (default: {','.join(DTYPES)}, float64 on "
        f"shapes of 2^20 elements or more only unless listed alone; with --quick: {','.join(QUICK_DTYPES)})",
    )
    p.add_argument(
        "--threads",
        type=thread_list,
        default=None,
        help="comma-separated thread counts, each case timed with each "
        f"(default: fastbn.get_num_threads(), {fastbn.get_num_threads()} here)",
    )
    p.add_argument(
        "--repeat",
        type=int_at_least(3, " (the median of fewer samples is noise)"),
        default=None,
        help=f"timed samples per measurement, >= 3; the median is reported (default: {DEFAULT_REPEAT}; "
        f"with --quick: {QUICK_REPEAT})",
    )
    p.add_argument(
        "--warmup", type=int_at_least(0), default=2, help="untimed calls before timing each function (default: 2)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a short smoke run: shapes {','.join(QUICK_SHAPES)}, {','.join(QUICK_DTYPES)}, --repeat "
        f"{QUICK_REPEAT}; --shapes, --dtypes and --repeat given as well win (default: off, the full run)",
    )
    p.add_argument(
        "--fused",
        action="store_true",
        help="also time batch norm + residual + ReLU fused against plain batch norm, batch norm followed by a "
        "separate add and ReLU, and PyTorch eager's BN + add + ReLU (float32; default: off)",
    )
    p.add_argument(
        "--no-torch", action="store_true", help="skip the PyTorch comparison (default: compare when torch imports)"
    )
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy comparison (default: compare)")
    p.add_argument("--json", metavar="PATH", help="also write the raw numbers as JSON to PATH (default: no file)")
    p.add_argument(
        "--plot",
        metavar="PATH.png",
        help="draw the roofline fraction per case into PATH.png; needs matplotlib (default: no plot)",
    )
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cpu, or cuda for the CUDA kernels against PyTorch's (default: cpu)",
    )


def apply_preset(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the options left unset (None) from the full run's defaults or, with ``--quick``, the preset."""
    quick = getattr(args, "quick", False)
    if args.shapes is None:
        args.shapes = [parse_shape(s) for s in (QUICK_SHAPES if quick else DEFAULT_SHAPES)]
    if args.dtypes is None:
        args.dtypes = list(QUICK_DTYPES if quick else DTYPES)
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if quick else DEFAULT_REPEAT
    return args


# ----------------------------------------------------------------------------------------------------------
# Timing


def copy_bandwidth(repeat: int = 15, nbytes: int = COPY_BYTES) -> float:
    """GB/s of fastbn's multithreaded streaming copy of a large buffer (read + write)."""
    src = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    ms = time_interleaved({"copy": lambda: fastbn._core.stream_copy(src, dst)}, repeat, 2)["copy"]
    return 2 * src.nbytes / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------------------------------------
# Cases


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        from ._types import bfloat16

        return bfloat16()
    return np.dtype(name)


def _make(shape, layout, dtype, rng):
    """x in the given memory layout and its channel axis."""
    phys = (shape[0], *shape[2:], shape[1]) if layout == "nhwc" else shape
    x = rng.standard_normal(phys, dtype=np.float32).astype(dtype, copy=False)
    return x, (-1 if layout == "nhwc" else 1)


def _numpy_fns(x, axis, gamma, beta, dy, eps=1e-5):
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    bshape = [1] * x.ndim
    bshape[axis] = -1
    g = gamma.reshape(bshape)
    b = beta.reshape(bshape)
    n = x.size // x.shape[axis]

    def train():
        m = x.mean(axis=axes, keepdims=True)
        v = x.var(axis=axes, keepdims=True)
        return (x - m) / np.sqrt(v + eps) * g + b

    m = x.mean(axis=axes, keepdims=True)
    v = x.var(axis=axes, keepdims=True)

    def infer():
        return (x - m) / np.sqrt(v + eps) * g + b

    def backward():
        inv = 1 / np.sqrt(v + eps)
        xhat = (x - m) * inv
        db = dy.sum(axis=axes, keepdims=True)
        dg = (dy * xhat).sum(axis=axes, keepdims=True)
        return g * inv * (dy - db / n - xhat * dg / n)

    return {"train": train, "infer": infer, "backward": backward}


def _torch_tensors(torch, x, axis, *others):
    """torch views of x and of arrays laid out like it; NHWC memory becomes a channels_last tensor."""
    out = []
    for a in (x, *others):
        t = (
            torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
            if a.dtype.name == "bfloat16"
            else torch.from_numpy(a)
        )
        if a.ndim > 2 and axis == -1:
            t = t.permute(0, a.ndim - 1, *range(1, a.ndim - 1))
        out.append(t)
    return out


def _torch_fns(torch, x, axis, gamma, beta, dy, eps=1e-5):
    """PyTorch's passes: (fresh, out): with a new output every call, as a model runs them (a large fresh output
    is a fresh mapping whose pages fault in), and into preallocated outputs (the aten ``.out`` overloads),
    which times the kernels alone."""
    xt, dyt = _torch_tensors(torch, x, axis, dy)
    w, b = torch.from_numpy(gamma), torch.from_numpy(beta)
    c = gamma.shape[0]
    rm = torch.zeros(c, dtype=w.dtype)
    rv = torch.ones(c, dtype=w.dtype)
    _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(xt, w, b, rm, rv, True, 0.1, eps)
    fb = torch.nn.functional.batch_norm
    nbn, nbn_bwd = torch.ops.aten.native_batch_norm, torch.ops.aten.native_batch_norm_backward
    y, dx = torch.empty_like(xt), torch.empty_like(xt)
    sm, si, dw, db, none = (torch.empty(c, dtype=w.dtype) for _ in range(5))
    mask = [True, True, True]
    fresh = {
        "train": lambda: fb(xt, rm, rv, w, b, training=True, momentum=0.1, eps=eps),
        "infer": lambda: fb(xt, rm, rv, w, b, training=False, eps=eps),
        "backward": lambda: nbn_bwd(dyt, xt, w, rm, rv, save_mean, save_invstd, True, eps, mask),
    }
    out = {
        "train": lambda: nbn.out(xt, w, b, rm, rv, True, 0.1, eps, out=y, save_mean=sm, save_invstd=si),
        "infer": lambda: nbn.out(xt, w, b, rm, rv, False, 0.1, eps, out=y, save_mean=none, save_invstd=none),
        "backward": lambda: nbn_bwd.out(
            dyt, xt, w, rm, rv, save_mean, save_invstd, True, eps, mask, out0=dx, out1=dw, out2=db
        ),
    }
    return fresh, out


def _fastbn_fns(x, axis, gamma, beta, dy, eps=1e-5):
    y = np.empty_like(x)
    dx = np.empty_like(x)
    _, mean, var = fastbn.batch_norm_train(x, gamma, beta, axis=axis, eps=eps)
    steady = {
        "train": lambda: fastbn.batch_norm_train(x, gamma, beta, axis=axis, eps=eps, out=y),
        "infer": lambda: fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis, eps=eps, out=y),
        "backward": lambda: fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis, eps=eps, out=dx),
    }
    fresh = {
        "train": lambda: fastbn.batch_norm_train(x, gamma, beta, axis=axis, eps=eps),
        "infer": lambda: fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis, eps=eps),
        "backward": lambda: fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis, eps=eps),
    }
    return steady, fresh


def _yardsticks(x):
    """The per-case yardsticks over x's S bytes: a streaming copy (2S), dst = a + b (3S) and a read (S)."""
    raw = x.reshape(-1).view(np.uint8)
    src = raw[: raw.size // 4 * 4].view(np.float32)
    other = src.copy()
    dst = np.empty_like(src)
    return {
        "copy": lambda: fastbn._core.stream_copy(src, dst),
        "add": lambda: fastbn._core.stream_add(src, other, dst),
        "read": lambda: fastbn._core.stream_read(src),
    }


def _fused_case(args, torch, shape, layout, rng, threads) -> list[dict]:
    """Batch norm + residual + ReLU fused, against plain batch norm, a separate add and ReLU, and torch eager."""
    x, axis = _make(shape, layout, np.dtype(np.float32), rng)
    r = rng.standard_normal(x.shape, dtype=np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    c = shape[1]
    g = (rng.random(c) + 0.5).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    y, mean, var = fastbn.batch_norm_train(x, g, b, axis=axis, activation="relu", residual=r)
    ys, dx, dz = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    kw = {"axis": axis, "activation": "relu"}

    def unfused_fwd():
        fastbn.batch_norm_train(x, g, b, axis=axis, out=ys)
        np.add(ys, r, out=ys)
        np.maximum(ys, 0, out=ys)

    def unfused_bwd():
        np.multiply(dy, y > 0, out=dz)  # the ReLU's backward; dz is also the residual's gradient
        fastbn.batch_norm_backward(dz, x, mean, var, g, axis=axis, out=dx)

    fns = {
        "plain_fwd": lambda: fastbn.batch_norm_train(x, g, b, axis=axis, out=ys),
        "fused_fwd": lambda: fastbn.batch_norm_train(x, g, b, residual=r, out=ys, **kw),
        "unfused_fwd": unfused_fwd,
        "plain_bwd": lambda: fastbn.batch_norm_backward(dy, x, mean, var, g, axis=axis, out=dx),
        "fused_bwd": lambda: fastbn.batch_norm_backward(
            dy, x, mean, var, g, y=y, beta=b, out=dx, return_dresidual=True, **kw
        ),  # fmt: skip
        "unfused_bwd": unfused_bwd,
    }
    if torch is not None:
        xt, rt, dyt = _torch_tensors(torch, x, axis, r, dy)
        xt.requires_grad_(True)
        wt, bt = torch.from_numpy(g), torch.from_numpy(b)
        fb = torch.nn.functional.batch_norm

        def torch_fwd():
            with torch.no_grad():
                torch.relu(fb(xt, None, None, wt, bt, training=True) + rt)

        def torch_fwd_bwd():
            xt.grad = None
            torch.relu(fb(xt, None, None, wt, bt, training=True) + rt).backward(dyt)

        fns["torch_fwd"] = torch_fwd
        fns["torch_fwd_bwd"] = torch_fwd_bwd
    rows = []
    for t in threads:
        fastbn.set_num_threads(t)
        if torch is not None:
            torch.set_num_threads(t)
        smp = time_samples(fns, args.repeat, args.warmup)
        row = {
            "shape": "x".join(map(str, shape)), "layout": layout, "threads": t,
            "fused_fwd_ms": float(np.median(smp["fused_fwd"])), "fused_bwd_ms": float(np.median(smp["fused_bwd"])),
            "fwd_vs_plain": paired(smp, ("fused_fwd",), "plain_fwd"),
            "bwd_vs_plain": paired(smp, ("fused_bwd",), "plain_bwd"),
            "unfused_fwd_speedup": paired(smp, ("unfused_fwd",), "fused_fwd"),
            "unfused_bwd_speedup": paired(smp, ("unfused_bwd",), "fused_bwd"),
        }  # fmt: skip
        if torch is not None:
            row["torch_fwd_speedup"] = paired(smp, ("torch_fwd",), "fused_fwd")
            fused_both = [a + b for a, b in zip(smp["fused_fwd"], smp["fused_bwd"])]
            row["torch_bwd_speedup"] = float(np.median([t / f for t, f in zip(smp["torch_fwd_bwd"], fused_both)]))
        rows.append(row)
    return rows


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="bench", unit="case", file=sys.stderr, leave=False)
    except ImportError:

        class Plain:
            def __init__(self):
                self.n = 0

            def update(self, k=1):
                self.n += k
                print(f"bench: {self.n}/{total} cases", file=sys.stderr)

            def set_postfix_str(self, s):
                pass

            def close(self):
                pass

        return Plain()


def run_cpu(args, torch) -> dict:
    rng = np.random.default_rng(0)
    threads = args.threads or [fastbn.get_num_threads()]
    saved_threads = fastbn.get_num_threads()
    fastbn.set_num_threads(max(threads))
    bw_start = copy_bandwidth()
    all_cases = list(cases(args))
    bar = _progress(len(all_cases) * len(threads) * len(args.passes))
    # Where the one-time probe found that the last-level cache does not keep 16 MiB of writes (a VM's share of a
    # big L3), working sets count as in it only up to half that.
    keeps = fastbn._core.cache_keeps_writes()
    cpu = {**machine(), "llc_keeps_writes": keeps}
    llc = cpu["llc_bytes"] if keeps else min(cpu["llc_bytes"], LLC_NOT_KEPT_BYTES)
    results: list[Result] = []
    fused: list[dict] = []
    try:
        for shape, layout, dtype in all_cases:
            dt = _dtype(dtype)
            pdt = np.float64 if dt == np.float64 else np.float32
            x, axis = _make(shape, layout, dt, rng)
            dy = rng.standard_normal(x.shape, dtype=np.float32).astype(dt, copy=False)
            c = shape[1]
            gamma = (rng.random(c) + 0.5).astype(pdt)
            beta = rng.standard_normal(c).astype(pdt)
            steady, fresh = _fastbn_fns(x, axis, gamma, beta, dy)
            yard = _yardsticks(x)
            tfns, tout = _torch_fns(torch, x, axis, gamma, beta, dy) if torch is not None else ({}, {})
            half = dt.itemsize == 2
            nfns = _numpy_fns(x, axis, gamma, beta, dy) if not args.no_numpy and not half else {}
            for t in threads:
                fastbn.set_num_threads(t)
                if torch is not None:
                    torch.set_num_threads(t)
                for pass_ in args.passes:
                    bar.set_postfix_str(f"{'x'.join(map(str, shape))} {layout} {pass_} {dtype} {t}T")
                    fns = {"fastbn": steady[pass_], "fresh": fresh[pass_], **yard}
                    if pass_ in tfns:
                        fns["torch"], fns["torch out"] = tfns[pass_], tout[pass_]
                    smp = time_samples(fns, args.repeat, args.warmup)
                    ms = {k: float(np.median(v)) for k, v in smp.items()}
                    if pass_ in nfns:  # slow: fewer samples, timed on its own
                        ms["numpy"] = time_interleaved({"numpy": nfns[pass_]}, min(3, args.repeat), 1)["numpy"]
                    floor = FLOORS["nchw" if layout == "nchw" else layout][pass_]
                    reads = READS["nchw" if layout == "nchw" else layout][pass_]
                    r = Result(
                        shape="x".join(map(str, shape)),
                        layout=layout,
                        pass_=pass_,
                        dtype=dtype,
                        threads=t,
                        mbytes=x.nbytes / 1e6,
                        fastbn_ms=ms["fastbn"],
                        fresh_ms=ms["fresh"],
                        torch_ms=ms.get("torch"),
                        torch_out_ms=ms.get("torch out"),
                        numpy_ms=ms.get("numpy"),
                        floor=floor,
                        floor_fraction=paired(smp, YARDSTICK_OF_FLOOR[floor], "fastbn"),
                        reads=reads,
                        read_fraction=paired(smp, ("read",) * reads, "fastbn"),
                        in_cache=0 < llc and 3 * x.nbytes <= llc,
                    )
                    r.gbs = TRAFFIC[pass_] * x.nbytes / (r.fastbn_ms * 1e-3) / 1e9
                    r.roofline = r.gbs / bw_start
                    r.copy_ms = ms["copy"]
                    r.copy_fraction = TRAFFIC[pass_] / 2 * r.copy_ms / r.fastbn_ms
                    if r.torch_ms is not None:
                        r.speedup = r.torch_ms / r.fastbn_ms
                        r.fresh_speedup = r.torch_ms / r.fresh_ms
                        r.out_speedup = paired(smp, ("torch out",), "fastbn")
                    results.append(r)
                    bar.update(1)
        if getattr(args, "fused", False):
            for shape in args.shapes:
                for layout in ["nc"] if len(shape) == 2 else list(args.layouts):
                    fused += _fused_case(args, torch, shape, layout, rng, threads)
    finally:
        bar.close()
        fastbn.set_num_threads(saved_threads)
    f32 = {(r.shape, r.layout, r.pass_, r.threads): r.fastbn_ms for r in results if r.dtype == "float32"}
    for r in results:
        if r.dtype in ("bfloat16", "float16"):
            base = f32.get((r.shape, r.layout, r.pass_, r.threads))
            r.vs_float32 = r.fastbn_ms / base if base else None
    fastbn.set_num_threads(max(threads))
    bw_end = copy_bandwidth()
    fastbn.set_num_threads(saved_threads)
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": cpu,
        "fastbn": fastbn.build_info(),
        "torch": getattr(torch, "__version__", None),
        "numpy": np.__version__,
        "copy_bandwidth_gbs": bw_start,
        "copy_bandwidth_end_gbs": bw_end,
        "repeat": args.repeat,
        "results": [asdict(r) for r in results],
        "fused": fused,
    }


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    labels = [f"{r['shape']} {r['layout']} {r['pass_']} {r['dtype'][-2:]} {r['threads']}T" for r in rows]
    values = [r["roofline"] for r in rows]
    colors = {"train": "tab:blue", "infer": "tab:green", "backward": "tab:orange"}
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.5))
    ax.barh(range(len(rows)), values, color=[colors[r["pass_"]] for r in rows])
    ax.axvline(1.0, color="k", lw=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    bw = report["copy_bandwidth_gbs"]
    ax.set_xlabel(f"roofline fraction (minimal traffic / time) / copy bandwidth {bw:.0f} GB/s")
    ax.set_title(f"fastbn {report['fastbn']['version']} on {report['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    apply_preset(args)
    if args.device == "cuda":
        return _bench_cuda.run(args)
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print(
                "fastbn bench: PyTorch is not installed, so there is no PyTorch column "
                "(pip install 'fastbn[bench]' pins torch==2.13.0)",
                file=sys.stderr,
            )
    report = run_cpu(args, torch)
    print(format_table(report, COPY_BYTES))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nraw numbers: {args.json}")
    if args.plot:
        try:
            plot(report, args.plot)
            print(f"plot: {args.plot}")
        except ImportError:
            print("fastbn bench: --plot needs matplotlib (pip install 'fastbn[bench]')", file=sys.stderr)
            return 1
    return 0
