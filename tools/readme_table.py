"""Print the README's performance table from the bench's JSON (one core and two cores).

Usage: python tools/readme_table.py docs/bench.json
"""

import json
import sys

import numpy as np

from grufast.bench import _fastest_peer


def _ms(v: float) -> str:
    return f"{v:.3g}"


def _cell(times: dict) -> tuple[str, float]:
    peer, best = _fastest_peer(times)
    ratio = times["grufast"] / best
    return f"{_ms(times['grufast'])} ms / {_ms(best)} ({peer}) = **{ratio:.2f}**", ratio


def main(path: str) -> None:
    with open(path) as f:
        one, two = json.load(f)[:2]
    print("| T, B, I, H | inference 1 core: grufast / best peer | inference 2 cores "
          "| training 1 core: grufast / best peer | training 2 cores "
          "| grufast 2-core speed-up (inference, training) |")
    print("|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {k: [] for k in ("i1", "i2", "t1", "t2")}
    for r1, r2 in zip(one["rows"], two["rows"]):
        cells = []
        for key, row, kind in (("i1", r1, "inference_ms"), ("i2", r2, "inference_ms"),
                               ("t1", r1, "training_ms"), ("t2", r2, "training_ms")):
            text, ratio = _cell(row[kind])
            cells.append(text)
            ratios[key].append(ratio)
        up_i = r1["inference_ms"]["grufast"] / r2["inference_ms"]["grufast"]
        up_t = r1["training_ms"]["grufast"] / r2["training_ms"]["grufast"]
        shape = ", ".join(map(str, r1["shape"]))
        print(f"| {shape} | " + " | ".join(cells) + f" | {up_i:.2f}×, {up_t:.2f}× |")
    gm = {k: float(np.exp(np.mean(np.log(v)))) for k, v in ratios.items()}
    print(f"\nGeometric means of grufast / fastest peer: inference {gm['i1']:.2f} (1 core) and "
          f"{gm['i2']:.2f} (2 cores); training {gm['t1']:.2f} and {gm['t2']:.2f}.")
    vs = [f"{', '.join(map(str, r['shape']))}: {r['inference_ms']['grufast'] / r['sgemm_ms']:.2f}×"
          for r in one["rows"] if r["shape"][1] >= 64]
    print("Inference against one sgemm of the same FLOPs (1 core): " + "; ".join(vs) + ".")
    for res, label in ((one, "1 core"), (two, "2 cores")):
        s = res["streaming_us"]
        print(f"Streaming ({label}): " + ", ".join(f"{k} {v:.2f} µs" for k, v in s.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/bench.json")
