"""fastbn against the batch norms a user would pick instead, each peer in its own fresh process:
PyTorch (native, and oneDNN through ``to_mkldnn``), TensorFlow (oneDNN), JAX (XLA) and ONNX Runtime (inference).

    pip install '.[peers]'        # torch==2.13.0, jax[cpu], tensorflow-cpu, onnxruntime, onnx
    python benchmarks/peers.py [--threads 2] [--repeat 11] [--rounds 3] [--json benchmarks/results/peers.json]
                               [--peers fastbn,torch-out,...] [--cases 32x64x8x8/nhwc,64x256/nc,...]

Every peer times the same cases (float32): training forward (batch statistics), inference (given statistics)
and backward (dx, dgamma, dbeta from dy), in NCHW and channels-last memory where the peer has that layout.
Outputs are fresh each call for every peer, as a model allocates them (a large fresh output is a fresh mapping
whose pages fault in: most of PyTorch's time on the large cases); fastbn and PyTorch ("torch-out", the aten
``.out`` overloads) are also timed writing into preallocated outputs, their kernels alone. The table gives
medians in ms and, per case, fastbn's speed-up over the fastest peer, torch-out included. A peer that is not
installed, or that has no such operation, is a dash.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = [
    ((64, 128, 56, 56), "nchw"), ((64, 128, 56, 56), "nhwc"), ((256, 256, 14, 14), "nchw"),
    ((256, 256, 14, 14), "nhwc"), ((8192, 1024), "nc"), ((128, 64, 1024), "nchw"), ((32, 64, 8, 8), "nchw"),
    ((32, 64, 8, 8), "nhwc"), ((64, 256), "nc"),
]  # fmt: skip
PASSES = ("train", "infer", "backward")
PEERS = ("fastbn", "fastbn-out", "torch", "torch-out", "torch-onednn", "tensorflow", "jax", "onnxruntime")
EPS = 1e-5


def case_text(case) -> str:
    return f"{'x'.join(map(str, case[0]))}/{case[1]}"


def median_ms(fn, repeat: int, min_seconds: float = 2e-3) -> float:
    for _ in range(2):
        fn()
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t >= min_seconds or n >= 1 << 14:
            break
        n *= 4
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n * 1e3)
    samples.sort()
    return samples[len(samples) // 2]


def data(shape, layout):
    import numpy as np

    rng = np.random.default_rng(0)
    phys = (shape[0], *shape[2:], shape[1]) if layout == "nhwc" else shape
    x = rng.standard_normal(phys, dtype=np.float32)
    dy = rng.standard_normal(phys, dtype=np.float32)
    c = shape[1]
    return x, dy, (rng.random(c) + 0.5).astype(np.float32), rng.standard_normal(c).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------
# Peers: each returns {pass: callable} for a case, or raises NotImplementedError for what it does not have


def peer_fastbn(shape, layout, out: bool):
    import numpy as np

    import fastbn

    x, dy, g, b = data(shape, layout)
    axis = -1 if layout == "nhwc" else 1
    _, m, v = fastbn.batch_norm_train(x, g, b, axis=axis)
    y, dx = (np.empty_like(x), np.empty_like(x)) if out else (None, None)
    return {
        "train": lambda: fastbn.batch_norm_train(x, g, b, axis=axis, out=y),
        "infer": lambda: fastbn.batch_norm_infer(x, m, v, g, b, axis=axis, out=y),
        "backward": lambda: fastbn.batch_norm_backward(dy, x, m, v, g, axis=axis, out=dx),
    }


def _torch_tensors(shape, layout):
    import torch

    x, dy, g, b = data(shape, layout)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    if layout == "nhwc":  # NHWC memory: torch's channels_last
        perm = (0, x.ndim - 1, *range(1, x.ndim - 1))
        xt, dyt = xt.permute(*perm), dyt.permute(*perm)
    return xt, dyt, torch.from_numpy(g), torch.from_numpy(b)


def peer_torch(shape, layout, out: bool = False):
    """PyTorch's native batch norm; out=True: into preallocated outputs (the aten ``.out`` overloads), its
    kernels without the page faults of a fresh output."""
    import torch

    xt, dyt, w, b = _torch_tensors(shape, layout)
    c = w.shape[0]
    rm, rv = torch.zeros(c), torch.ones(c)
    nbn, nbn_bwd = torch.ops.aten.native_batch_norm, torch.ops.aten.native_batch_norm_backward
    _, sm, si = nbn(xt, w, b, rm, rv, True, 0.1, EPS)
    mask = [True, True, True]
    if out:
        y, dx = torch.empty_like(xt), torch.empty_like(xt)
        m2, s2, dw, db, none = (torch.empty(c) for _ in range(5))
        return {
            "train": lambda: nbn.out(xt, w, b, rm, rv, True, 0.1, EPS, out=y, save_mean=m2, save_invstd=s2),
            "infer": lambda: nbn.out(xt, w, b, rm, rv, False, 0.1, EPS, out=y, save_mean=none, save_invstd=none),
            "backward": lambda: nbn_bwd.out(dyt, xt, w, rm, rv, sm, si, True, EPS, mask, out0=dx, out1=dw, out2=db),
        }
    fb = torch.nn.functional.batch_norm
    return {
        "train": lambda: fb(xt, rm, rv, w, b, training=True, momentum=0.1, eps=EPS),
        "infer": lambda: fb(xt, rm, rv, w, b, training=False, eps=EPS),
        "backward": lambda: nbn_bwd(dyt, xt, w, rm, rv, sm, si, True, EPS, mask),
    }


def peer_torch_onednn(shape, layout):
    import torch

    if len(shape) != 4 or layout != "nchw":
        raise NotImplementedError("oneDNN tensors are 4-D NCHW here")
    xt, dyt, w, b = _torch_tensors(shape, layout)
    xm, dym = xt.to_mkldnn(), dyt.to_mkldnn()
    c = w.shape[0]
    rm, rv = torch.zeros(c), torch.ones(c)
    fns = {"infer": lambda: torch.batch_norm(xm, w, b, rm, rv, False, 0.1, EPS, False)}
    try:
        _, sm, si = torch.ops.aten.native_batch_norm(xm, w, b, rm, rv, True, 0.1, EPS)
        fns["train"] = lambda: torch.ops.aten.native_batch_norm(xm, w, b, rm, rv, True, 0.1, EPS)
        torch.ops.aten.native_batch_norm_backward(dym, xm, w, rm, rv, sm, si, True, EPS, [True, True, True])
        fns["backward"] = lambda: torch.ops.aten.native_batch_norm_backward(dym, xm, w, rm, rv, sm, si, True, EPS,
                                                                           [True, True, True])  # fmt: skip
    except RuntimeError:
        pass
    return fns


def peer_tensorflow(shape, layout):
    import tensorflow as tf

    x, dy, g, b = data(shape, layout)
    if len(shape) == 2:  # (N, C) -> (N, 1, 1, C)
        x4, dy4 = x.reshape(shape[0], 1, 1, shape[1]), dy.reshape(shape[0], 1, 1, shape[1])
        fmt = "NHWC"
    elif len(shape) == 4:
        x4, dy4, fmt = x, dy, ("NHWC" if layout == "nhwc" else "NCHW")
    else:  # (N, C, L) NCHW -> (N, C, L, 1)
        x4, dy4, fmt = x.reshape(*shape, 1), dy.reshape(*shape, 1), "NCHW"
    xt, dyt, gt, bt = tf.constant(x4), tf.constant(dy4), tf.constant(g), tf.constant(b)
    axes = [0, 1, 2] if fmt == "NHWC" else [0, 2, 3]
    mean, var = tf.nn.moments(xt, axes)

    @tf.function
    def train(x):
        return tf.compat.v1.nn.fused_batch_norm(x, gt, bt, epsilon=EPS, data_format=fmt, is_training=True)[0]

    @tf.function
    def infer(x):
        return tf.compat.v1.nn.fused_batch_norm(x, gt, bt, mean, var, epsilon=EPS, data_format=fmt,
                                                is_training=False)[0]  # fmt: skip

    @tf.function
    def backward(x, dy):
        with tf.GradientTape() as tape:
            tape.watch([x, gt, bt])
            y = tf.compat.v1.nn.fused_batch_norm(x, gt, bt, epsilon=EPS, data_format=fmt, is_training=True)[0]
        return tape.gradient(y, [x, gt, bt], output_gradients=dy)

    fns = {"train": lambda: train(xt).numpy(), "infer": lambda: infer(xt).numpy(),
           "backward": lambda: [t.numpy() for t in backward(xt, dyt)]}  # fmt: skip
    for f in fns.values():
        f()  # NCHW fused batch norm is not on every CPU build: fail here, not in the timing
    return fns


def peer_jax(shape, layout):
    import jax
    import jax.numpy as jnp

    x, dy, g, b = data(shape, layout)
    axis = x.ndim - 1 if layout == "nhwc" else 1
    axes = tuple(i for i in range(x.ndim) if i != axis)
    bshape = [1] * x.ndim
    bshape[axis] = -1

    def bn(x, g, b):
        m = jnp.mean(x, axes, keepdims=True)
        v = jnp.var(x, axes, keepdims=True)
        return (x - m) * jax.lax.rsqrt(v + EPS) * g.reshape(bshape) + b.reshape(bshape)

    m = jnp.mean(x, axes, keepdims=True)
    v = jnp.var(x, axes, keepdims=True)
    train = jax.jit(bn)
    infer = jax.jit(lambda x, g, b: (x - m) * jax.lax.rsqrt(v + EPS) * g.reshape(bshape) + b.reshape(bshape))
    backward = jax.jit(lambda x, g, b, dy: jax.vjp(bn, x, g, b)[1](dy))
    xj, gj, bj, dyj = (jax.device_put(a) for a in (x, g, b, dy))
    return {
        "train": lambda: train(xj, gj, bj).block_until_ready(),
        "infer": lambda: infer(xj, gj, bj).block_until_ready(),
        "backward": lambda: jax.block_until_ready(backward(xj, gj, bj, dyj)),
    }


def peer_onnxruntime(shape, layout):
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if layout == "nhwc":
        raise NotImplementedError("ONNX BatchNormalization takes the channels on axis 1")
    x, _, g, b = data(shape, layout)
    m, v = x.mean(axis=tuple(i for i in range(x.ndim) if i != 1)), x.var(axis=tuple(i for i in range(x.ndim) if i != 1))
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [len(a)], a) for n, a in (("g", g), ("b", b), ("m", m), ("v", v))]
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=EPS)
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(x.shape)) for n in ("x", "y")]
    graph = helper.make_graph([node], "bn", io[:1], io[1:], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    sess = ort.InferenceSession(onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString(),
                                opts, providers=["CPUExecutionProvider"])  # fmt: skip
    feed = {"x": np.ascontiguousarray(x)}
    return {"infer": lambda: sess.run(None, feed)}


def worker(peer: str, threads: int, repeat: int, cases: list) -> dict:
    if peer.startswith("fastbn"):
        import fastbn

        fastbn.set_num_threads(threads)
        make = lambda s, lay: peer_fastbn(s, lay, out=peer == "fastbn-out")  # noqa: E731
    elif peer.startswith("torch"):
        import torch

        torch.set_num_threads(threads)
        make = {"torch": peer_torch, "torch-out": lambda s, lay: peer_torch(s, lay, out=True)}.get(
            peer, peer_torch_onednn
        )
    elif peer == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        make = peer_tensorflow
    elif peer == "jax":
        make = peer_jax
    else:
        make = peer_onnxruntime
    import importlib.metadata as md

    dist = {"fastbn": "fastbn", "fastbn-out": "fastbn", "torch": "torch", "torch-out": "torch", "torch-onednn": "torch",
            "tensorflow": "tensorflow-cpu", "jax": "jax", "onnxruntime": "onnxruntime"}[peer]  # fmt: skip
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        version = md.version("tensorflow") if peer == "tensorflow" else "?"
    out = {"version": version, "results": {}}
    for shape, layout in cases:
        key = f"{'x'.join(map(str, shape))} {layout}"
        try:
            fns = make(shape, layout)
        except (NotImplementedError, RuntimeError, ValueError) as e:
            out["results"][key] = {"error": str(e).splitlines()[0][:100]}
            continue
        out["results"][key] = {p: median_ms(fns[p], repeat) for p in PASSES if p in fns}
    return out


def median_run(runs: list) -> dict:
    """One worker result whose every time is the median over the runs that have it."""
    out = {"version": runs[0]["version"], "rounds": len(runs), "results": {}}
    for case in runs[0]["results"]:
        for ps in runs[0]["results"][case]:
            vals = [r["results"].get(case, {}).get(ps) for r in runs]
            vals = [v for v in vals if v is not None]
            out["results"].setdefault(case, {})[ps] = statistics.median(vals) if vals else None
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # a peer's own process, which loads nothing of fastbn unless fastbn is the peer
        peer, threads, repeat, cases = json.loads(argv[1])
        print(json.dumps(worker(peer, threads, repeat, [(tuple(shape), layout) for shape, layout in cases])))
        return 0
    from fastbn.bench import case_list, comma_list, int_at_least

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int_at_least(1), default=2, help="threads for every peer (default 2)")
    p.add_argument("--repeat", type=int_at_least(1), default=11, help="samples per case (default 11)")
    p.add_argument("--peers", type=comma_list(PEERS), default=list(PEERS),
                   help=f"comma-separated (default {','.join(PEERS)})")  # fmt: skip
    p.add_argument("--cases", type=case_list(("nchw", "nhwc", "nc")), default=CASES,
                   help=f"comma-separated SHAPE/LAYOUT (default {','.join(case_text(c) for c in CASES)})")  # fmt: skip
    p.add_argument("--rounds", type=int_at_least(1), default=1,
                   help="run every peer's process this many times, the peers in a rotating order each round, and "
                        "report each cell's median over the rounds (default 1)")  # fmt: skip
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}")  # fmt: skip
    # This machine's bandwidth drifts from minute to minute, and each peer runs in a process of its own, at its
    # own time: with several rounds (the order rotating) every peer samples the drift alike.
    peers = args.peers
    runs = {}
    for k in range(args.rounds):
        for peer in peers[k % len(peers) :] + peers[: k % len(peers)]:
            job = json.dumps([peer, args.threads, args.repeat, args.cases])
            r = subprocess.run([sys.executable, __file__, "--worker", job], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                print(f"{peer}: not run ({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode})",
                      file=sys.stderr)  # fmt: skip
                continue
            runs.setdefault(peer, []).append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"{peer} {runs[peer][-1]['version']}: round {k + 1} done", file=sys.stderr)
    results = {peer: median_run(runs[peer]) for peer in peers if peer in runs}
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    rounds = f", median over {args.rounds} rounds of processes" if args.rounds > 1 else ""
    print(f"{cpu}, {args.threads} threads, float32, medians of {args.repeat} samples (ms){rounds}; fresh outputs "
          f"for every peer, fastbn-out and torch-out write into out=; speed-up: fastest other peer / fastbn "
          f"(fresh)")  # fmt: skip
    names = list(results)
    print(f"{'case':22s} {'pass':8s} " + " ".join(f"{n[:12]:>12s}" for n in names) + f" {'speed-up':>9s}")
    table = []
    for shape, layout in args.cases:
        key = f"{'x'.join(map(str, shape))} {layout}"
        for ps in PASSES:
            row = {n: results[n]["results"].get(key, {}).get(ps) for n in names}
            others = [v for n, v in row.items() if v and not n.startswith("fastbn")]
            ours = row.get("fastbn")
            speed = min(others) / ours if others and ours else None
            table.append({"case": key, "pass": ps, "ms": row, "speedup_vs_best_peer": speed})
            cells = " ".join(f"{row[n]:12.3f}" if row[n] else f"{'-':>12s}" for n in names)
            print(f"{key:22s} {ps:8s} {cells} {speed:8.2f}x" if speed else f"{key:22s} {ps:8s} {cells} {'-':>9s}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "threads": args.threads, "repeat": args.repeat,
                                               "date": time.strftime("%Y-%m-%d"), "peers": results,
                                               "table": table}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
