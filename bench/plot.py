"""Plots from a `bench/run.py` results file (issue 29: "a plot where a
curve says more than a table").

    python bench/plot.py bench/results/partial-16.json   # efficiency vs job length
    python bench/plot.py bench/results/partial-17.json   # jobs/s vs connected clients

Writes PNG files next to the JSON (`<name>-efficiency.png`,
`<name>-clients.png`) for whatever the file holds: scenario 16 runs over
several job lengths (`--s16-ms 0.5,1,2,5,10,20`), scenario 17 runs over
several client counts (`--s17-sweep 1,10,100,1000`). Each point is the
median of its runs, the bar its min–max. Needs matplotlib
(`bench/plot.sh` makes a venv with it under target/).
"""
import json
import os
import re
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"bare": "#888888", "emq": "#1f6feb", "emq-rust": "#8250df", "celery": "#2da44e", "eventmq": "#cf222e"}
LABELS = {"bare": "no job system (plain loop per core)", "emq": "emq, EventMQ's client (fire-and-forget)", "emq-rust": "emq, its Rust client (results)",
          "celery": "Celery prefork + Redis", "eventmq": "EventMQ 0.3.13"}


def med_span(vals, key):
    xs = [v[key] for v in vals if v.get(key) is not None]
    if not xs:
        return None
    return statistics.median(xs), min(xs), max(xs)


def errbar(ax, xs, pts, label, colour, marker="o"):
    ys = [p[0] for p in pts]
    lo = [p[0] - p[1] for p in pts]
    hi = [p[2] - p[0] for p in pts]
    ax.errorbar(xs, ys, yerr=[lo, hi], label=label, color=colour, marker=marker, capsize=3, linewidth=1.6)


def efficiency(data, out):
    by_system = {}
    for key, vals in data["results"].items():
        m = re.fullmatch(r"s16_([\w-]+?)_([0-9.]+)", key)
        if m and vals:
            by_system.setdefault(m.group(1), []).append((float(m.group(2)), vals))
    if not by_system:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for system, points in sorted(by_system.items()):
        points.sort()
        xs, pts = [], []
        for ms, vals in points:
            p = med_span(vals, "efficiency_pct")
            if p:
                xs.append(ms)
                pts.append(p)
        if xs:
            errbar(ax, xs, pts, LABELS.get(system, system), COLOURS.get(system, None))
    ax.axhline(100, color="#888", linewidth=0.8, linestyle=":")
    ax.axhline(90, color="#d29922", linewidth=0.8, linestyle="--", label="goal at 1 ms (90 %)")
    ax.set_xscale("log")
    ax.set_xlabel("CPU time per job (ms, log scale)")
    ax.set_ylabel("efficiency: jobs/s ÷ (cores ÷ job CPU time), %")
    ax.set_ylim(0, 105)
    ax.set_title("CPU-bound jobs, %d workers on %d cores (scenario 16)" % (data.get("cores", 2), data.get("cores", 2)))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    print(out)
    return True


def clients(data, out):
    points = []
    for key, vals in data["results"].items():
        m = re.fullmatch(r"s17_(\d+)", key)
        if m and vals:
            points.append((int(m.group(1)), vals))
    if not points:
        return False
    points.sort()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = [c for c, _ in points]
    errbar(ax, xs, [med_span(v, "jobs_per_sec") for _, v in points], "C clients, all jobs at once", COLOURS["emq"])
    errbar(ax, xs, [med_span(v, "one_client_jobs_per_sec") for _, v in points],
           "one client, window 1000, same router", "#888", marker="s")
    ax.set_xscale("log")
    ax.set_xlabel("connected clients (log scale); the same %s jobs in all" %
                  "{:,}".format(points[0][1][0].get("n", 0)))
    ax.set_ylabel("jobs/s (with results)")
    ax.set_ylim(0, None)
    ax.grid(True, which="both", alpha=0.25)
    ax2 = ax.twinx()
    ax2.plot(xs, [med_span(v, "max_over_median")[0] for _, v in points], color="#cf222e", marker="^",
             linestyle="--", linewidth=1, label="slowest / median client completion")
    ax2.set_ylabel("slowest / median client completion", color="#cf222e")
    ax2.set_ylim(0.9, max(1.5, max(med_span(v, "max_over_median")[0] for _, v in points) * 1.1))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower left")
    ax.set_title("Many clients (scenario 17), 2 workers on 2 cores")
    fig.tight_layout()
    fig.savefig(out)
    print(out)
    return True


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        with open(path) as f:
            data = json.load(f)
        base = os.path.splitext(path)[0]
        made = efficiency(data, base + "-efficiency.png")
        made |= clients(data, base + "-clients.png")
        if not made:
            print("%s: no scenario 16 or 17 sweep in it" % path, file=sys.stderr)


if __name__ == "__main__":
    main()
