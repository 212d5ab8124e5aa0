"""The README's benchmark tables (Markdown), from the JSON files the benchmarks write:

    python benchmarks/tables.py main  benchmarks/results/cpu-epyc-2core.json     # python -m fastbn bench --threads 1,2
    python benchmarks/tables.py half  benchmarks/results/half-epyc-2core.json    # ... --dtypes float32,bfloat16,float16
    python benchmarks/tables.py fused benchmarks/results/fused-epyc-2core.json   # ... --fused
    python benchmarks/tables.py resnet benchmarks/results/resnet-epyc-2core.json # benchmarks/resnet.py --json
    python benchmarks/tables.py compare BEFORE.json AFTER.json                   # two main runs, large cases

Nothing is measured here: the numbers are the files', and each table says which run made them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastbn.bench import int_at_least


def _shape(s: str) -> str:
    return s.replace("x", "×")


def _layout(s: str) -> str:
    return s.upper()


def _head(d: dict) -> str:
    m = d["machine"]
    return (
        f"{d['date'][:10]}, {m['cpu']} ({m['cores']} cores), fastbn {d['fastbn']['version']} "
        f"({d['fastbn']['simd']}), PyTorch {d['torch']}, medians of {d['repeat']} samples"
    )


def _opt(v, spec: str, suffix: str = "") -> str:
    return "–" if v is None else format(v, spec) + suffix


def main_table(d: dict, threads: int = 2) -> str:
    rows = [r for r in d["results"] if r["threads"] == threads and r["dtype"] == "float32"]
    one = {
        (r["shape"], r["layout"], r["pass_"]): r for r in d["results"] if r["threads"] == 1 and r["dtype"] == "float32"
    }
    out = [
        f"<!-- {_head(d)} -->",
        "| shape | memory | pass | fastbn ms | PyTorch ms | speed-up | speed-up, fresh output | PyTorch out= ms | "
        "speed-up vs out= | GB/s | floor | of floor | 1→2 threads |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        o = one.get((r["shape"], r["layout"], r["pass_"]))
        frac = f"{r['floor_fraction']:.2f}" + (" (in LLC)" if r["in_cache"] else "")
        scale = f"{o['fastbn_ms'] / r['fastbn_ms']:.2f}×" if o else "-"
        out.append(
            f"| {_shape(r['shape'])} | {_layout(r['layout'])} | {r['pass_']} | {r['fastbn_ms']:.3f} | "
            f"{r['torch_ms']:.3f} | {r['speedup']:.1f}× | {r['fresh_speedup']:.1f}× | "
            f"{_opt(r.get('torch_out_ms'), '.3f')} | {_opt(r.get('out_speedup'), '.2f', '×')} | {r['gbs']:.1f} | "
            f"{r['floor']}S | {frac} | {scale} |"
        )
    f64 = [r for r in d["results"] if r["threads"] == threads and r["dtype"] == "float64"]
    if f64:
        sp = [r["speedup"] for r in f64]
        fr = [r["floor_fraction"] for r in f64 if not r["in_cache"]]
        out.append("")
        out.append(
            f"float64 ({threads} threads, the large shapes): {min(sp):.1f}–{max(sp):.1f}× faster than PyTorch, "
            f"{min(fr):.2f}–{max(fr):.2f} of the floor."
        )
    return "\n".join(out)


def half_table(d: dict) -> str:
    rows = {(r["shape"], r["layout"], r["pass_"], r["dtype"]): r for r in d["results"]}
    keys = sorted({k[:3] for k in rows}, key=lambda k: list(rows).index(k + ("float32",)))
    out = [
        f"<!-- {_head(d)} -->",
        "| shape | memory | pass | float32 ms | bfloat16 ms (× float32) | float16 ms (× float32) | "
        "bfloat16 vs PyTorch bfloat16 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for k in keys:
        f, b, h = rows[k + ("float32",)], rows.get(k + ("bfloat16",)), rows.get(k + ("float16",))

        def cell(r):
            return "-" if r is None else f"{r['fastbn_ms']:.3f} ({r['vs_float32']:.2f})"

        tb = "-" if b is None or b.get("torch_ms") is None else f"{b['speedup']:.1f}×"
        out.append(
            f"| {_shape(k[0])} | {_layout(k[1])} | {k[2]} | {f['fastbn_ms']:.3f} | {cell(b)} | {cell(h)} | {tb} |"
        )
    return "\n".join(out)


def fused_table(d: dict) -> str:
    out = [
        f"<!-- {_head(d)} -->",
        "| shape | memory | fused fwd ms | fused / plain fwd | unfused / fused fwd | PyTorch / fused fwd | "
        "fused bwd ms | fused / plain bwd | unfused / fused bwd | PyTorch / fused bwd |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["fused"]:
        out.append(
            f"| {_shape(r['shape'])} | {_layout(r['layout'])} | {r['fused_fwd_ms']:.3f} | {r['fwd_vs_plain']:.2f} | "
            f"{r['unfused_fwd_speedup']:.2f}× | {r['torch_fwd_speedup']:.1f}× | {r['fused_bwd_ms']:.3f} | "
            f"{r['bwd_vs_plain']:.2f} | {r['unfused_bwd_speedup']:.2f}× | {r['torch_bwd_speedup']:.1f}× |"
        )
    return "\n".join(out)


def resnet_table(d: dict) -> str:
    i = d["info"]
    out = [
        f"<!-- {i['date']}, {i['cpu']} ({i['cores']} cores, {i['threads']} threads), PyTorch {i['torch']}, fastbn "
        f"{i['fastbn']} ({i['simd']}), batch {i['batch']} at {i['size']}², {i['repeat']} repeats -->",
        "| memory | step | stock ms | converted | converted, fused | no batch norm (bound) | stock compiled ms | "
        "converted compiled | converted fused compiled | page faults per step: stock · converted · fused |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    for mem in ("NCHW", "channels_last"):
        for mode in ("train", "eval"):
            e, c = d[mem][mode], d[mem].get(mode + " compiled", {})
            faults = " · ".join(_opt(e[k].get("page_faults"), ".0f") for k in ("stock", "fastbn", "fastbn fused"))
            bound = f"{e['no batch norm']['ratio']:.3f}×" if "no batch norm" in e else "–"
            compiled = " | ".join(
                _opt(c.get(k, {}).get(key), spec, suffix)
                for k, key, spec, suffix in (("stock compiled", "median_ms", ".1f", ""),
                                             ("fastbn compiled", "ratio", ".3f", "×"),
                                             ("fastbn fused compiled", "ratio", ".3f", "×"))
            )  # fmt: skip
            out.append(
                f"| {mem} | {mode} | {e['stock']['median_ms']:.1f} | {e['fastbn']['ratio']:.3f}× | "
                f"{e['fastbn fused']['ratio']:.3f}× | {bound} | {compiled} | {faults} |"
            )
    if not d.get("layers"):
        return "\n".join(out)
    out += [
        "",
        "| layer shape | memory | mode | torch.nn.BatchNorm2d ms | fastbn.torch ms | speed-up |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in d["layers"]:
        out.append(
            f"| {_shape(r['shape'])} | {r['memory']} | {r['mode']} | {r['torch_ms']:.3f} | {r['fastbn_ms']:.3f} | "
            f"{r['speedup']:.2f}× |"
        )
    return "\n".join(out)


def compare_table(before: dict, after: dict, threads: int = 2) -> str:
    """Fraction of the floor and time of each large float32 case (beyond the last-level cache) in two runs."""

    def rows(d):
        return {
            (r["shape"], r["layout"], r["pass_"]): r
            for r in d["results"]
            if r["threads"] == threads and r["dtype"] == "float32" and not r["in_cache"]
        }

    b, a = rows(before), rows(after)
    out = [
        f"<!-- before: {_head(before)}, copy {before['copy_bandwidth_gbs']:.1f} -> "
        f"{before['copy_bandwidth_end_gbs']:.1f} GB/s -->",
        f"<!-- after: {_head(after)}, copy {after['copy_bandwidth_gbs']:.1f} -> "
        f"{after['copy_bandwidth_end_gbs']:.1f} GB/s -->",
        "| shape | memory | pass | floor | of floor, before | of floor, after | fastbn ms, before → after |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for k, r in a.items():
        o = b.get(k)
        if o is None:
            continue
        out.append(
            f"| {_shape(k[0])} | {_layout(k[1])} | {k[2]} | {r['floor']}S | {o['floor_fraction']:.2f} | "
            f"{r['floor_fraction']:.2f} | {o['fastbn_ms']:.3f} → {r['fastbn_ms']:.3f} |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["main", "half", "fused", "resnet", "compare"])
    p.add_argument("json", type=Path)
    p.add_argument("after", type=Path, nargs="?", help="compare: the second run's JSON")
    p.add_argument("--threads", type=int_at_least(1), default=2, help="thread count of the main table (default 2)")
    a = p.parse_args()
    d = json.loads(a.json.read_text())
    if a.kind == "compare":
        if a.after is None:
            p.error("compare takes two JSON files: BEFORE AFTER")
        print(compare_table(d, json.loads(a.after.read_text()), a.threads))
    elif a.kind == "main":
        print(main_table(d, a.threads))
    elif a.kind == "half":
        print(half_table(d))
    elif a.kind == "fused":
        print(fused_table(d))
    else:
        print(resnet_table(d))


if __name__ == "__main__":
    main()
