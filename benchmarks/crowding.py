"""Whether fastbn's crowding back-off (a slow thread start keeps calls under 3 MiB per thread on fewer threads for
10 ms) fires where it should not: calls back to back with the default per-thread minimum against the same minimum
chosen (set_min_bytes_per_thread, which the back-off never overrides), on every core, with the share of calls the
back-off was on for. On an idle machine the two should match (calls back to back find the team awake, and a slow
start there counts only while a CPU is held elsewhere); with another process holding a CPU (`--busy N` starts N
spinning processes) the default should stay on fewer threads.

    python benchmarks/crowding.py [--threads T] [--busy N] [--calls K]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

import fastbn
from fastbn import _core
from fastbn.bench import int_at_least


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--threads", type=int_at_least(1), default=len(os.sched_getaffinity(0)), help="fastbn threads (all CPUs)"
    )
    ap.add_argument("--busy", type=int_at_least(0), default=0, help="spinning processes to start beside this one (0)")
    ap.add_argument("--calls", type=int_at_least(1), default=800, help="calls per measurement (800)")
    args = ap.parse_args()
    fastbn.set_num_threads(args.threads)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        time.sleep(0.3 if busy else 0)
        print(f"fastbn {fastbn.__version__}, {fastbn.get_num_threads()} threads, {args.busy} busy processes, "
              f"runnable now {_core._runnable_threads()} of {len(os.sched_getaffinity(0))} CPUs")  # fmt: skip
        default = _core.min_bytes_per_thread()
        rng = np.random.default_rng(0)
        for shape in [(32, 64, 28, 28), (16, 64, 16, 16), (32, 64, 8, 8)]:
            x = rng.standard_normal(shape).astype(np.float32)
            dy = rng.standard_normal(shape).astype(np.float32)
            y, dx = np.empty_like(x), np.empty_like(x)
            _, m, v = fastbn.batch_norm_train(x)
            fns = {
                "train": lambda x=x, y=y: fastbn.batch_norm_train(x, out=y),
                "backward": lambda dy=dy, x=x, m=m, v=v, dx=dx: fastbn.batch_norm_backward(dy, x, m, v, out=dx),
            }
            for name, fn in fns.items():
                for mode in ("default", "chosen", "default", "chosen"):
                    if mode == "chosen":
                        _core.set_min_bytes_per_thread(default)
                    else:
                        _core.reset_min_bytes_per_thread()
                    times, backed_off = [], 0
                    for _ in range(args.calls):
                        t = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - t)
                        backed_off += _core.min_bytes_per_thread_now() > _core.min_bytes_per_thread()
                    print(f"{'x'.join(map(str, shape)):12s} {name:8s} {mode:8s} median {np.median(times) * 1e6:7.1f} us"
                          f"  mean {np.mean(times) * 1e6:7.1f}  backed off {backed_off / args.calls:.2f}")  # fmt: skip
        _core.reset_min_bytes_per_thread()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
