"""Recomputes region_metrics_1m and evu_1m from a campo lake's bronze tables with polars (an
engine independent of campo's DataFusion SQL), straight from SPEC 3 and 4, and compares them
with the rows campo wrote. Prints a JSON report; exits 1 on any mismatch.

Usage: signals.py LAKE_DIR
Defaults: 1-minute windows, low_hz 420, high_hz 700, Apdex T 300 ms, equal EVU weights.
"""
import json
import math
import os
import sys

import polars as pl

LOW, HIGH, T = 420.0, 700.0, 300.0
lake = sys.argv[1]
key = ["region", "window_start"]


def read(name):
    return pl.read_delta(os.path.join(lake, name))


def windowed(df):
    return df.filter(~pl.col("late")).with_columns(pl.col("occurred_at").dt.truncate("1m").alias("window_start"))


readings = windowed(read("readings"))
activity = windowed(read("activity"))
written_rm = read("region_metrics_1m")
written_evu = read("evu_1m")
if written_rm.height == 0:
    sys.exit("no region_metrics_1m rows written")
closed_through = written_rm["window_end"].max()
readings = readings.filter(pl.col("window_start") + pl.duration(minutes=1) <= closed_through)
activity = activity.filter(pl.col("window_start") + pl.duration(minutes=1) <= closed_through)

# SPEC 3.
per_user = readings.group_by(key + ["user_hash"]).agg(pl.col("hz").mean().alias("user_hz"))
users = per_user.group_by(key).agg(
    pl.len().alias("users"), (pl.col("user_hz") < LOW).mean().alias("low_share")
)
buckets = readings.group_by(key + ["hz_bucket"]).agg(pl.len().alias("n"))
entropy = (
    buckets.with_columns((pl.col("n") / pl.col("n").sum().over(key)).alias("p"))
    .group_by(key)
    .agg((-(pl.col("p") * pl.col("p").log(2)).sum()).alias("h"), pl.len().alias("k"))
    .with_columns(pl.when(pl.col("k") < 2).then(0.0).otherwise(pl.col("h") / math.log2(11)).alias("entropy"))
    .select(key + ["entropy"])
)
rm = (
    readings.group_by(key)
    .agg(
        pl.len().alias("readings"),
        pl.col("hz").mean().alias("hz_mean"),
        pl.col("hz").quantile(0.5, interpolation="linear").alias("hz_p50"),
        pl.col("hz").quantile(0.95, interpolation="linear").alias("hz_p95"),
        pl.col("entropy").mean().alias("sensorial_entropy"),
        pl.col("mood_delta").mean().alias("mood_mean"),
    )
    .join(users, on=key)
    .join(entropy, on=key)
    .with_columns(
        (1.0 - pl.col("entropy")).alias("stability"),
        pl.when(pl.col("hz_mean") < LOW).then(pl.lit("collapse"))
        .when(pl.col("hz_mean") >= HIGH).then(pl.lit("expansion"))
        .otherwise(pl.lit("neutral")).alias("state"),
    )
)

# SPEC 4.
req = activity.filter(pl.col("kind") == "api.request")
frustrated = pl.col("status") >= 500
req_agg = req.group_by(key).agg(
    pl.len().alias("requests"),
    (
        ((~frustrated) & (pl.col("latency_ms") <= T)).sum()
        + ((~frustrated) & (pl.col("latency_ms") > T) & (pl.col("latency_ms") <= 4 * T)).sum() / 2
    ).alias("sat"),
    (pl.col("status").is_in([401, 403, 429]) | pl.col("waf_blocked").fill_null(False)).sum().alias("bad"),
    frustrated.sum().alias("errors"),
    pl.col("latency_ms").quantile(0.95, interpolation="linear").alias("latency_p95_ms"),
).with_columns(
    (pl.col("sat") / pl.col("requests")).alias("latency"),
    (1.0 - pl.col("bad") / pl.col("requests")).alias("security"),
    (pl.col("errors") / pl.col("requests")).alias("error_rate"),
)
feed = activity.filter((pl.col("kind") == "feed.rendered") & pl.col("entropy").is_not_null()).group_by(key).agg(
    (1.0 - pl.col("entropy").mean()).alias("coherence")
)
windows = pl.concat([activity.select(key).unique(), rm.select(key)]).unique()
evu = (
    windows.join(req_agg, on=key, how="left")
    .join(feed, on=key, how="left")
    .join(rm.select(key + [(1.0 - pl.col("low_share")).alias("emotional")]), on=key, how="left")
    .with_columns(pl.col("requests").fill_null(0))
)
comps = ["latency", "coherence", "emotional", "security"]
evu = evu.with_columns(
    (
        100.0
        * pl.sum_horizontal([pl.col(c).fill_null(0.0) for c in comps])
        / pl.sum_horizontal([pl.col(c).is_not_null().cast(pl.Float64) for c in comps])
    ).alias("evu")
)


def compare(name, expected, written, cols):
    mismatches = []
    e = {(r["region"], r["window_start"]): r for r in expected.iter_rows(named=True)}
    w = {(r["region"], r["window_start"]): r for r in written.iter_rows(named=True)}
    for k in sorted(set(e) | set(w)):
        if k not in w or k not in e:
            mismatches.append({"table": name, "key": str(k), "problem": "missing in " + ("lake" if k not in w else "recomputation")})
            continue
        for c in cols:
            a, b = e[k][c], w[k][c]
            if isinstance(a, float) or isinstance(b, float):
                ok = (a is None and b is None) or (
                    a is not None and b is not None and not (math.isnan(a) and b is None)
                    and abs(a - b) <= 1e-9 * max(1.0, abs(a))
                )
                if a is not None and math.isnan(a) and b is None:
                    ok = True
            else:
                ok = a == b
            if not ok:
                mismatches.append({"table": name, "key": str(k), "column": c, "expected": a, "written": b})
    return len(e), mismatches


n_rm, m_rm = compare("region_metrics_1m", rm, written_rm,
                     ["readings", "users", "hz_mean", "hz_p50", "hz_p95", "low_share", "entropy", "stability",
                      "sensorial_entropy", "mood_mean", "state"])
n_evu, m_evu = compare("evu_1m", evu, written_evu,
                       ["requests", "latency", "coherence", "emotional", "security", "evu", "error_rate", "latency_p95_ms"])
report = {"region_metrics_1m": n_rm, "evu_1m": n_evu, "mismatches": (m_rm + m_evu)[:20],
          "mismatch_count": len(m_rm) + len(m_evu), "closed_through": str(closed_through)}
print(json.dumps(report, default=str))
sys.exit(1 if report["mismatch_count"] else 0)
