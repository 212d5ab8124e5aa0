"""Command line: ``python -m fastbn info | bench | demo`` and the paths native builds need."""

from __future__ import annotations

import argparse
import json
import sys


def format_info(info: dict, cuda_usable: bool) -> str:
    """``build_info()`` for people: one line per aspect, then any key this function does not know yet."""
    rest = dict(info)
    version, simd, simd_compiled, compiler = (rest.pop(k) for k in ("version", "simd", "simd_compiled", "compiler"))
    openmp, openmp_version, max_threads, num_threads = (
        rest.pop(k) for k in ("openmp", "openmp_version", "max_threads", "num_threads")
    )
    cuda, cuda_version, cuda_architectures = (rest.pop(k) for k in ("cuda", "cuda_version", "cuda_architectures"))
    if cuda:
        usable = "usable now" if cuda_usable else "not usable now"
        cuda_line = f"compiled in (CUDA {cuda_version}, architectures {cuda_architectures}); a device is {usable}"
    else:
        cuda_line = "not compiled in"
    rows = [
        ("SIMD path", f"{simd} (compiled: {simd_compiled})"),
        (
            "threads",
            f"{num_threads} (default {max_threads}; " + (f"OpenMP {openmp_version})" if openmp else "no OpenMP)"),
        ),
        ("CUDA", cuda_line),
        ("compiler", compiler),
        *((key.replace("_", " "), value) for key, value in rest.items()),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join([f"fastbn {version}", *(f"  {name:<{width}}  {value}" for name, value in rows)])


def _info(args) -> int:
    import fastbn

    if args.json:
        print(json.dumps(fastbn.build_info(), indent=2))
    else:
        print(format_info(fastbn.build_info(), fastbn.cuda.is_available()))
    return 0


def main(argv: list[str] | None = None) -> int:
    import fastbn
    from fastbn import bench as _bench
    from fastbn.demo import cli as _demo

    parser = argparse.ArgumentParser(
        prog="python -m fastbn", description="fastbn: batch normalization at the memory-bandwidth limit"
    )
    paths = parser.add_mutually_exclusive_group()
    paths.add_argument("--cmake-dir", action="store_true", help="print the directory of fastbnConfig.cmake")
    paths.add_argument("--include", action="store_true", help="print the C/C++ include directory")
    paths.add_argument("--libdir", action="store_true", help="print the directory of libfastbn.so")
    paths.add_argument("--pkgconfig-dir", action="store_true", help="print the directory of fastbn.pc")
    parser.add_argument("--version", action="version", version=f"fastbn {fastbn.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{info,bench,demo}")
    p = sub.add_parser("info", help="print how fastbn was built and what it runs with (build_info)")
    p.add_argument("--json", action="store_true", help="print build_info() as JSON (default: a readable summary)")
    p.set_defaults(func=_info)
    p = sub.add_parser(
        "bench",
        help="time fastbn against PyTorch, NumPy and the copy bandwidth",
        description="Time fastbn's training forward, inference forward and backward against PyTorch and NumPy, "
        "and against a streaming copy of the same bytes (the roofline of a memory-bound pass). Prints medians "
        "and ratios measured in this one run; --quick for a smoke run in seconds.",
    )
    _bench.add_arguments(p)
    p.set_defaults(func=_bench.run)
    p = sub.add_parser(
        "demo",
        help="train a sigmoid network on digits with and without BatchNorm (Ioffe & Szegedy 2015, Fig. 1)",
        description=_demo.__doc__,
    )
    _demo.add_arguments(p)
    p.set_defaults(func=_demo.run)
    args = parser.parse_args(argv)

    if args.cmake_dir:
        print(fastbn.get_cmake_dir())
        return 0
    if args.include:
        print(fastbn.get_include())
        return 0
    if args.libdir:
        print(fastbn.get_library_dir())
        return 0
    if args.pkgconfig_dir:
        from pathlib import Path

        print(Path(fastbn.get_library_dir()) / "pkgconfig")
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
