"""Print the README's performance table from the bench's JSON (one core and two cores).

Usage: python tools/readme_table.py docs/bench.json
"""

import json
import sys

import numpy as np

from grufast._bench_env import describe
from grufast.bench import SGEMM_NAME, fastest_peer


def _ms(v: float) -> str:
    return f"{v:.3g}"


def _cell(cells: dict) -> tuple[str, float]:
    peer, best = fastest_peer(cells)
    g = cells["grufast"]
    ratio = g["median"] / best
    iqr = 100 * (g["q3"] - g["q1"]) / g["median"]
    return (f"{_ms(g['median'])} ms (±{iqr / 2:.0f}%) / {_ms(best)} ({peer}) = "
            f"**{ratio:.2f}**"), ratio


def main(path: str) -> None:
    with open(path) as f:
        results = json.load(f)
    one, two = results[0], results[-1]
    for res in (one, two):
        print(f"- {describe(res['environment'])}")
    print()
    print("| T, B, I, H | inference 1 core: grufast / best peer | inference 2 cores "
          "| training 1 core: grufast / best peer | training 2 cores "
          "| grufast 2-core speed-up (inference, training) |")
    print("|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {k: [] for k in ("i1", "i2", "t1", "t2")}
    for r1, r2 in zip(one["rows"], two["rows"]):
        cells = []
        for key, row, kind in (("i1", r1, "inference"), ("i2", r2, "inference"),
                               ("t1", r1, "training"), ("t2", r2, "training")):
            text, ratio = _cell(row[kind])
            cells.append(text)
            ratios[key].append(ratio)
        up_i = r1["inference"]["grufast"]["median"] / r2["inference"]["grufast"]["median"]
        up_t = r1["training"]["grufast"]["median"] / r2["training"]["grufast"]["median"]
        shape = ", ".join(map(str, r1["shape"]))
        print(f"| {shape} | " + " | ".join(cells) + f" | {up_i:.2f}×, {up_t:.2f}× |")
    gm = {k: float(np.exp(np.nanmean(np.log(v)))) for k, v in ratios.items()}
    print(f"\nGeometric means of grufast / fastest peer: inference {gm['i1']:.2f} (1 core) and "
          f"{gm['i2']:.2f} (2 cores); training {gm['t1']:.2f} and {gm['t2']:.2f}.")
    runs = ((one, "1 core"), (two, "2 cores"))
    for res, label in runs:
        vs = [f"{', '.join(map(str, r['shape']))}: "
              f"{r['inference']['grufast']['median'] / r['sgemm']['median']:.2f}×"
              for r in res["rows"] if r.get("sgemm")]
        if vs:
            print(f"Inference against {SGEMM_NAME} ({label}, batched shapes only): "
                  + "; ".join(vs) + ".")
    emulated = one["environment"].get("emulated")
    if emulated:  # the peers held to the emulated ISA, without those that could not be
        out = set(emulated["not_held"])
        for kind in ("inference", "training"):
            parts = []
            for res, label in runs:
                rs = []
                for r in res["rows"]:
                    peer, best = fastest_peer({k: v for k, v in r[kind].items()
                                               if k not in out})
                    if peer != "-":
                        rs.append(r[kind]["grufast"]["median"] / best)
                if rs:
                    parts.append(f"{label} {min(rs):.2f}–{max(rs):.2f}×")
            if parts:
                isa = emulated["isa"].upper()
                which = (f" held to {isa} (all but {', '.join(sorted(out))})" if out
                         else f", every peer held to {isa}")
                print(f"{kind.capitalize()} against the fastest peer{which}: "
                      + ", ".join(parts) + ".")
    for res, label in runs:
        s = res.get("streaming", {})  # absent from a --tables-only run
        for L, cells in s.get("layers", {}).items():
            print(f"Streaming, {L} layer(s) ({label}, µs per step): " + ", ".join(
                f"{k} {v['median']:.2f}" for k, v in cells.items() if "median" in v))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/bench.json")
