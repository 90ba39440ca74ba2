"""The bench's plot: each peer's time relative to grufast's, per shape, with the spread.

grufast is the reference (the line at 1), not a bar; bars above 1 mean grufast is faster.
The legend sits below the panels, the title names the machine, the build and the date.
"""

from __future__ import annotations

import numpy as np


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grufast._bench_env import describe

    kinds = ("inference", "training")
    # one colour per peer in every panel (a peer missing from a panel shifts no colours)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours: dict[str, str] = {}
    fig, axes = plt.subplots(len(results), 2, figsize=(14, 4.4 * len(results) + 1.2),
                             squeeze=False)
    handles = {}
    for row_axes, result in zip(axes, results):
        rows = result["rows"]
        for ax, kind in zip(row_axes, kinds):
            names = [n for n in rows[0][kind] if n != "grufast"
                     and any("median" in r[kind][n] for r in rows)]
            x = np.arange(len(rows))
            width = 0.8 / max(len(names), 1)
            for i, n in enumerate(names):
                base = [r[kind]["grufast"]["median"] for r in rows]
                cells = [r[kind][n] for r in rows]
                rel = np.array([c["median"] / b if "median" in c else np.nan
                                for c, b in zip(cells, base)])
                lo = np.array([(c["median"] - c["q1"]) / b if "median" in c else 0
                               for c, b in zip(cells, base)])
                hi = np.array([(c["q3"] - c["median"]) / b if "median" in c else 0
                               for c, b in zip(cells, base)])
                pos = x + (i - (len(names) - 1) / 2) * width
                colour = colours.setdefault(n, palette[len(colours) % len(palette)])
                bars = ax.bar(pos, rel, width, yerr=[lo, hi], capsize=1.5, label=n,
                              color=colour, error_kw={"lw": 0.7})
                handles.setdefault(n, bars)
                for p_, c in zip(pos, cells):
                    if "na" in c:
                        ax.text(p_, 1, "n/a", rotation=90, ha="center", va="bottom",
                                fontsize=6)
            ax.set_yscale("log")
            line = ax.axhline(1, color="k", lw=1)
            handles.setdefault("grufast (= 1, the reference)", line)
            ax.set_xticks(x, [", ".join(map(str, r["shape"])) for r in rows], fontsize=7,
                          rotation=20)
            ax.set_ylabel("time / grufast's time (above 1: grufast faster)", fontsize=8)
            ax.set_title(f"{kind}, {result['environment']['thread_mode']} (T, B, I, H)",
                         fontsize=9)
    env = results[0]["environment"]
    st = results[0]["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if k != "python")
    fig.suptitle(f"grufast vs its peers: {describe(env).rsplit(';', 2)[0]}; "
                 f"{env['date']}\n{st['dtype']}, {st['layers']} layer(s), "
                 f"{'bidirectional' if st['bidirectional'] else 'unidirectional'}, "
                 f"linear_before_reset={st['linear_before_reset']}; {versions}",
                 fontsize=9)
    fig.legend(list(handles.values()), list(handles), loc="lower center",
               ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
