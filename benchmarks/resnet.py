"""End to end: a ResNet-18 layout, stock PyTorch against ``fastbn.torch.convert(model)`` and
``convert(model, fuse=True)``, NCHW and channels-last, eager and under torch.compile.

    python benchmarks/resnet.py [--batch 16] [--size 160] [--threads 2] [--repeat 7] [--compile] [--layers]
                                [--no-bn] [--device cpu|cuda] [--json results.json]

A training step is forward, cross-entropy and backward; eval is a forward under no_grad. The variants run
interleaved sample by sample in one process (in a rotating order), and the table reports, per variant, the
median time, the median of the per-sample ratios stock / variant (> 1: faster than stock) and the median of
the process's minor page faults per step (on CPU, tensors that glibc's malloc hands back to the kernel and maps
afresh; ``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736`` in the environment keeps them
mapped: the settings are printed with the results). --compile also
times torch.compile of the stock and the converted models (compile time reported apart), --layers the batch-norm
layer alone against torch.nn.BatchNorm2d on the bench shapes (forward + backward, train and eval), --no-bn the
model with its batch norms removed (eager): the ratio no batch norm can beat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resnet_model import ResNet18

import fastbn
import fastbn.torch as ft
from fastbn.bench import int_at_least


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(f) -> tuple[float, int]:
    """(seconds, minor page faults of the process) of one call."""
    sync()
    faults = minor_faults()
    t = time.perf_counter()
    f()
    sync()
    t = time.perf_counter() - t
    return t, minor_faults() - faults


def interleave(fns: dict, repeat: int, warmup: int = 2) -> dict:
    """{name: [(seconds, page faults) per sample]}, the functions run in a rotating order each round."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out = {n: [] for n in names}
    for r in range(repeat):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            out[n].append(timed(fns[n]))
    return out


def summarize(samples: dict, base: str) -> dict:
    rows = {}
    for name, got in samples.items():
        ts = [t for t, _ in got]
        ratios = [b / t for (b, _), t in zip(samples[base], ts)]
        rows[name] = {"median_ms": 1e3 * statistics.median(ts), "ratio": statistics.median(ratios),
                      "page_faults": statistics.median(f for _, f in got)}  # fmt: skip
    return rows


def without_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every batch norm replaced by an identity: the step's time when batch norm costs nothing,
    the bound of what any batch norm can win (the values drift without normalization, the work does not)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                setattr(module, name, torch.nn.Identity())
    return model


def models(channels_last: bool, no_bn: bool = False):
    torch.manual_seed(0)
    stock = ResNet18()
    conv = ft.convert(ResNet18())
    fused = ft.convert(ResNet18(), fuse=True)
    conv.load_state_dict(stock.state_dict())
    fused.load_state_dict(stock.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {"stock": stock, "fastbn": conv, "fastbn fused": fused}
    if no_bn:
        out["no batch norm"] = without_batch_norm(ResNet18())
    return {k: m.to(DEVICE, memory_format=fmt) for k, m in out.items()}


def step_fns(ms: dict, x, target) -> tuple[dict, dict]:
    def train(m):
        def f():
            m.train()
            m.zero_grad(set_to_none=True)
            TF.cross_entropy(m(x), target).backward()

        return f

    def evaluate(m):
        def f():
            m.eval()
            with torch.no_grad():
                m(x)

        return f

    return {k: train(m) for k, m in ms.items()}, {k: evaluate(m) for k, m in ms.items()}


def end_to_end(args, channels_last: bool) -> dict:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.size, args.size, device=DEVICE).contiguous(memory_format=fmt)
    target = torch.randint(0, 1000, (args.batch,), device=DEVICE)
    ms = models(channels_last, args.no_bn)
    train, evaluate = step_fns(ms, x, target)
    res = {"train": summarize(interleave(train, args.repeat), "stock"),
           "eval": summarize(interleave(evaluate, args.repeat), "stock")}  # fmt: skip
    if args.compile:
        compiled, compile_s = {}, {}
        for name in ("stock", "fastbn", "fastbn fused"):
            cm = torch.compile(ms[name])
            t = time.perf_counter()
            cm.train()
            TF.cross_entropy(cm(x), target).backward()
            cm.eval()
            with torch.no_grad():
                cm(x)
            compile_s[name + " compiled"] = time.perf_counter() - t
            compiled[name + " compiled"] = cm
        ctrain, ceval = step_fns(compiled, x, target)
        res["train compiled"] = summarize(interleave(ctrain, args.repeat), "stock compiled")
        res["eval compiled"] = summarize(interleave(ceval, args.repeat), "stock compiled")
        res["compile seconds"] = compile_s
    return res


LAYER_SHAPES = [(64, 128, 56, 56), (256, 256, 14, 14), (32, 64, 8, 8), (16, 64, 80, 80), (16, 512, 5, 5)]


def layers(args) -> list:
    """The batch-norm layer alone: fastbn.torch.BatchNorm2d against torch.nn.BatchNorm2d."""
    rows = []
    for shape in LAYER_SHAPES:
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            x = torch.randn(shape, device=DEVICE).contiguous(memory_format=fmt).requires_grad_()
            dy = torch.randn(shape, device=DEVICE).contiguous(memory_format=fmt)
            mods = {"torch": torch.nn.BatchNorm2d(shape[1]).to(DEVICE), "fastbn": ft.BatchNorm2d(shape[1]).to(DEVICE)}

            def train(m, x=x, dy=dy):
                def f():
                    x.grad = None  # no accumulation pass
                    m.train()(x).backward(dy)

                return f

            def infer(m, x=x):
                def f():
                    with torch.no_grad():
                        m.eval()(x)

                return f

            for mode, make in (("train fwd+bwd", train), ("eval fwd", infer)):
                s = summarize(interleave({k: make(m) for k, m in mods.items()}, args.repeat * 3), "torch")
                rows.append({"shape": "x".join(map(str, shape)), "memory": "NHWC" if cl else "NCHW", "mode": mode,
                             "torch_ms": s["torch"]["median_ms"], "fastbn_ms": s["fastbn"]["median_ms"],
                             "speedup": s["fastbn"]["ratio"]})  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int_at_least(1), default=16, help="batch size (default 16)")
    p.add_argument("--size", type=int_at_least(1), default=160, help="image side (default 160)")
    p.add_argument("--threads", type=int_at_least(1), default=2, help="threads for torch and fastbn (default 2)")
    p.add_argument("--repeat", type=int_at_least(1), default=7, help="samples per variant (default 7)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of stock and converted")
    p.add_argument("--layers", action="store_true", help="also time the batch-norm layer alone on the bench shapes")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end ResNet-18 timings")
    p.add_argument("--no-bn", action="store_true",
                   help="also time the model without batch norm: the bound of any batch norm's gain")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the models and tensors live")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    fastbn.set_num_threads(args.threads)
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "fastbn": fastbn.__version__, "simd": fastbn.get_simd(), "batch": args.batch, "size": args.size,
            "repeat": args.repeat, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    if DEVICE.type == "cuda":
        info["device"] = torch.cuda.get_device_name(DEVICE).replace(" ", "_")
    info.update((k, v) for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))  # glibc's allocator
    print(" ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    out = {"info": info}
    if not args.no_e2e:
        for cl in (False, True):
            key = "channels_last" if cl else "NCHW"
            res = end_to_end(args, cl)
            out[key] = res
            for mode, rows in res.items():
                if mode == "compile seconds":
                    print(f"{key:13s} compile seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in rows.items()))
                    continue
                for name, r in rows.items():
                    print(f"{key:13s} {mode:15s} {name:22s} {r['median_ms']:9.1f} ms  x{r['ratio']:.3f}  "
                          f"{r['page_faults']:7.0f} page faults", flush=True)  # fmt: skip
    if args.layers:
        out["layers"] = layers(args)
        print(f"{'shape':16s} {'memory':6s} {'mode':14s} {'torch ms':>9s} {'fastbn ms':>9s} {'speed-up':>8s}")
        for r in out["layers"]:
            print(f"{r['shape']:16s} {r['memory']:6s} {r['mode']:14s} {r['torch_ms']:9.3f} {r['fastbn_ms']:9.3f} "
                  f"{r['speedup']:7.2f}x")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
