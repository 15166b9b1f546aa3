"""Draws the sweep plot from a scripts/sweep.sh table.

    usage: python3 scripts/plot.py SWEEP_CSV PNG

(scripts/sweep.sh calls it: bench-results/sweep.csv to bench-results/sweep.png
by default; docs/performance.png is drawn from docs/results/sweep-*.csv.)

Left: responses per second against connections, one line per pipeline depth.
Right: latency percentiles (p50, p99, p99.9) against connections at depth 1.
"""
import csv
import subprocess
import sys

try:
    import matplotlib
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "matplotlib"])
    import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(src)))
depths = sorted({int(r["depth"]) for r in rows})
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
for d in depths:
    pts = sorted((int(r["connections"]), float(r["rps"])) for r in rows if int(r["depth"]) == d)
    left.plot([c for c, _ in pts], [v / 1e3 for _, v in pts], marker="o", label=f"depth {d}")
left.set_xscale("log")
left.set_xlabel("connections")
left.set_ylabel("thousand responses / s")
left.set_title("loopline throughput (PING, one client thread)")
left.legend()
left.grid(True, alpha=0.3)
d1 = sorted((int(r["connections"]), r) for r in rows if int(r["depth"]) == 1)
for key, label in [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")]:
    right.plot([c for c, _ in d1], [float(r[key]) for _, r in d1], marker="o", label=label)
right.set_xscale("log")
right.set_yscale("log")
right.set_xlabel("connections")
right.set_ylabel("latency, microseconds")
right.set_title("loopline latency at depth 1")
right.legend()
right.grid(True, alpha=0.3)
fig.tight_layout()
fig.savefig(dst, dpi=100)
print(f"wrote {dst}")
