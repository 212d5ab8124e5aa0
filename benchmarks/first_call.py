"""First-call and steady-state times of small and medium batch norms, each trial in a fresh process.

Issue 9, section 4: with 2 threads on a 2-vCPU machine the first calls after start-up sometimes took 4-40 ms
each instead of ~0.02 ms. Each trial starts a new Python, imports fastbn (and with it NumPy, whose OpenBLAS
threads spin for ~0.1 s after start-up), then runs a fixed sequence of steps; each step times its first
`--calls` calls one by one, then `--steady` more. The table pools all trials of a variant: the median and the
maximum of the first call, of the other early calls, and of the steady-state calls, and the share of all calls
that took 1 ms or more (stalls: a normal call here takes 0.005-0.2 ms). Variants (environments)
run interleaved, trial by trial, so that a change in the machine's load hits them alike.

    python benchmarks/first_call.py                                 # 40 fresh processes, 2 threads
    python benchmarks/first_call.py --busy                          # another process keeps one core busy
    python benchmarks/first_call.py --variant libgomp-default:GOMP_SPINCOUNT=300000 --variant fastbn-default:
    python benchmarks/first_call.py --gap-us 200                    # other work between steady-state calls
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from fastbn.bench import int_at_least

# (label, shape): float32 NCHW training forwards, 128 KiB to 4 MiB, in an order that alternates between the
# sizes the kernels run on one thread and those they split over two.
STEPS = [
    ("small 128 KiB", (8, 16, 16, 16)),
    ("medium 1 MiB", (32, 32, 16, 16)),
    ("small 128 KiB", (8, 16, 16, 16)),
    ("medium 4 MiB", (64, 64, 16, 16)),
    ("medium 1 MiB", (32, 32, 16, 16)),
]


def child(threads: int, calls: int, steady: int, gap_us: float) -> None:
    import numpy as np

    import fastbn

    fastbn.set_num_threads(threads)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(shape, dtype=np.float32) for _, shape in STEPS]
    gap = gap_us * 1e-6
    out = []
    for x in inputs:
        early = []
        for _ in range(calls):
            t = time.perf_counter_ns()
            fastbn.batch_norm_train(x)
            early.append((time.perf_counter_ns() - t) / 1e6)
        later = []
        for _ in range(steady):
            if gap:
                until = time.perf_counter() + gap
                while time.perf_counter() < until:
                    pass
            t = time.perf_counter_ns()
            fastbn.batch_norm_train(x)
            later.append((time.perf_counter_ns() - t) / 1e6)
        out.append({"early": early, "steady": later})
    print(json.dumps({"steps": out, "threads": fastbn.get_num_threads()}))


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """'label:KEY=VALUE,KEY=VALUE' (an empty list: the environment as it is)."""
    label, _, assignments = spec.partition(":")
    env = {}
    for kv in filter(None, assignments.split(",")):
        key, sep, value = kv.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE in {spec!r}, got {kv!r}")
        env[key] = value
    return label or spec, env


def table(label: str, runs: list[dict], calls: int) -> str:
    lines = [f"{label}: {len(runs)} processes, {runs[0]['threads']} threads"]
    lines.append(f"  {'step':18s} {'first call ms':>17s} {f'calls 2-{calls} ms':>17s} {'steady ms':>17s} {'calls':>7s}")
    heads = ["median", "max"] * 3 + [">= 1 ms"]
    lines.append(f"  {'':18s} " + " ".join(f"{h:>8s}" for h in heads))
    for i, (name, _) in enumerate(STEPS):
        first = [r["steps"][i]["early"][0] for r in runs]
        early = [t for r in runs for t in r["steps"][i]["early"][1:]] or [float("nan")]
        steady = [t for r in runs for t in r["steps"][i]["steady"]] or [float("nan")]
        cells = [median(first), max(first), median(early), max(early), median(steady), max(steady)]
        every = [t for r in runs for t in r["steps"][i]["early"] + r["steps"][i]["steady"]]
        stalls = sum(t >= 1.0 for t in every) / len(every)
        lines.append(f"  {i + 1}. {name:15s} " + " ".join(f"{c:8.3f}" for c in cells) + f" {stalls:8.2%}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int_at_least(1), default=40, help="fresh processes per variant (default: 40)")
    p.add_argument("--threads", type=int_at_least(1), default=2, help="fastbn threads in each process (default: 2)")
    p.add_argument("--calls", type=int_at_least(1), default=5, help="early calls timed one by one per step (default 5)")
    p.add_argument("--steady", type=int_at_least(1), default=200, help="steady-state calls per step (default: 200)")
    p.add_argument("--gap-us", type=float, default=0.0, help="busy Python work between steady-state calls, in µs")
    p.add_argument("--busy", action="store_true", help="keep one core busy with another process meanwhile")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE,...",
        help="an environment to compare (repeatable; default: the environment as it is)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.threads, args.calls, args.steady, args.gap_us)
        return
    try:
        variants = [parse_variant(v) for v in args.variant] or [("as is", {})]
    except ValueError as e:
        p.error(str(e))

    cmd = [sys.executable, __file__, "--child", f"--threads={args.threads}", f"--calls={args.calls}"]
    cmd += [f"--steady={args.steady}", f"--gap-us={args.gap_us}"]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    runs: dict[str, list[dict]] = {label: [] for label, _ in variants}
    load = os.getloadavg()[0]
    try:
        if busy:
            time.sleep(0.5)
        for _ in range(args.trials):
            for label, env in variants:
                out = subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True, text=True)
                runs[label].append(json.loads(out.stdout))
    finally:
        if busy:
            busy.kill()
            busy.wait()

    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs, load average {load:.1f} before / {os.getloadavg()[0]:.1f} after"
        f"{'; one core kept busy by another process' if args.busy else ''}"
        f"{f'; {args.gap_us:g} µs of other work between steady-state calls' if args.gap_us else ''}"
    )
    for label, env in variants:
        print(
            table(
                f"{label} ({' '.join(f'{k}={v}' for k, v in env.items()) or 'environment as is'})",
                runs[label],
                args.calls,
            )
        )


if __name__ == "__main__":
    main()
