"""Recomputes the protective-mode level changes of SPEC 6 from a campo lake with polars (not
through campo), from region_metrics_1m, evu_1m and the 10-minute p_collapse in
collapse_forecast, and prints them as JSON: [[region, window_end_us, level], ...] in window order.

Usage: alerts.py LAKE_DIR
Defaults of SPEC 6: soft low_share >= 0.5 or p10 >= 0.8; medium hz < 420 x10 or low_share >= 0.65
x3; hard hz < 420 x30 or error_rate > 0.05 x3 or latency_p95_ms > 1000 x3; off: nothing holds and
hz >= 440 and low_share < 0.5 in each of the 5 windows after the last change.
"""
import json
import os
import sys

import polars as pl

lake = sys.argv[1]
read = lambda name: pl.read_delta(os.path.join(lake, name))

rm = read("region_metrics_1m").select("region", "window_end", "hz_mean", "low_share")
evu = read("evu_1m").select("region", "window_end", "error_rate", "latency_p95_ms")
fc = (
    read("collapse_forecast")
    .filter(pl.col("horizon_min") == 10)
    .select("region", pl.col("issued_at").alias("window_end"), pl.col("p_collapse").alias("p10"))
)
df = rm.join(evu, on=["region", "window_end"], how="left").join(fc, on=["region", "window_end"], how="left").sort("region", "window_end")

ORDER = {"off": 0, "soft": 1, "medium": 2, "hard": 3}
changes = []
for (region,), g in df.group_by(["region"], maintain_order=True):
    rows = g.to_dicts()
    level = "off"
    changed = -1
    for i, w in enumerate(rows):
        last = lambda n: rows[i - n + 1 : i + 1] if i + 1 >= n else None

        def each(n, f):
            ws = last(n)
            return ws is not None and all(f(x) for x in ws)

        if each(30, lambda x: x["hz_mean"] < 420) or each(3, lambda x: x["error_rate"] is not None and x["error_rate"] > 0.05) or each(
            3, lambda x: x["latency_p95_ms"] is not None and x["latency_p95_ms"] > 1000
        ):
            target = "hard"
        elif each(10, lambda x: x["hz_mean"] < 420) or each(3, lambda x: x["low_share"] >= 0.65):
            target = "medium"
        elif w["low_share"] >= 0.5 or (w["p10"] is not None and w["p10"] >= 0.8):
            target = "soft"
        else:
            target = "off"
        if ORDER[target] > ORDER[level]:
            level = target
        elif level != "off" and target == "off" and i - changed >= 5 and each(5, lambda x: x["hz_mean"] >= 440 and x["low_share"] < 0.5):
            level = "off"
        else:
            continue
        changed = i
        us = int(w["window_end"].timestamp() * 1_000_000)
        changes.append([region, us, level])

changes.sort(key=lambda c: (c[1], c[0]))
print(json.dumps(changes))
