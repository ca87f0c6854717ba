"""Chart of the canary analysis benchmark: median seconds to detect against the relative risk of the
canary's error rate, per judge (p90 as a band), from docs/analysis-benchmark.json."""
import json
import sys

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

raw = json.load(open(sys.argv[1]))
rows = [r for r in raw["rows"] if r["group"] == "errors-bad"]
rows.sort(key=lambda r: r["rr"])
horizon = raw["horizonSeconds"]
fig, ax = plt.subplots(figsize=(7, 4.2))
colors = {"canarygate": "#1f77b4", "threshold": "#d62728", "kayenta": "#2ca02c"}
for judge, color in colors.items():
    rr = [r["rr"] for r in rows]
    j = [next(x for x in r["judges"] if x["judge"] == judge) for r in rows]
    med = [x["medianSeconds"] for x in j]
    p90 = [x["p90Seconds"] for x in j]
    ax.plot(rr, med, marker="o", color=color, label=f"{judge} (median)")
    ax.fill_between(rr, med, p90, color=color, alpha=0.12)
ax.axhline(horizon, color="grey", linestyle=":", linewidth=1)
ax.text(rr[0], horizon * 1.05, "30-minute horizon (not detected)", fontsize=8, color="grey")
ax.set_xscale("log")
ax.set_yscale("log")
ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
ax.set_xticks(rr)
ax.set_xticklabels([f"{x:g}" for x in rr])
ax.set_xlabel("relative risk of a 5xx, canary vs production (0.5% baseline, 10% canary, 200 req/s)")
ax.set_ylabel("seconds to detect (median; band to p90)")
ax.set_title("Time to detect a worse canary")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
