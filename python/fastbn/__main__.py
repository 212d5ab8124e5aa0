"""Command line: ``python -m fastbn info | bench | demo`` and the paths native builds need."""

from __future__ import annotations

import argparse
import json
import sys


def _info(_args) -> int:
    import fastbn

    print(json.dumps(fastbn.build_info(), indent=2))
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
    p = sub.add_parser("info", help="print how fastbn was built (build_info) as JSON")
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
