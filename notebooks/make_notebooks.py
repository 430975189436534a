"""Writes the analyst notebooks (01..03.ipynb) from the cell sources below, without outputs.

The notebooks are committed; edit the cells here and run `python notebooks/make_notebooks.py`
(needs `nbformat`), so the .ipynb files stay reviewable and free of stale outputs.
"""
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''\
import glob
import os
from datetime import datetime, timezone

import deltalake
import duckdb
import duckdb_extension_delta
import matplotlib.pyplot as plt
import polars as pl

%matplotlib inline
plt.rcParams["figure.figsize"] = (11, 4)

# The lake root: CAMPO_LAKE, else the ./lake that `campo demo` writes beside this folder.
LAKE = os.environ.get("CAMPO_LAKE", os.path.join("..", "lake"))
def table(name):
    return os.path.join(LAKE, name)

# duckdb reads Delta through its delta extension, shipped inside the duckdb-extension-delta wheel
# (LOAD by path works offline; INSTALL delta would download).
_ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "**", "delta.duckdb_extension"), recursive=True)
con = duckdb.connect()
con.execute(f"LOAD '{_ext[0]}'")
print("lake:", os.path.abspath(LAKE))
'''

COLLECTIVE = [
    new_markdown_cell(
        "# The collective field\n\n"
        "Mean Hz, the share of users under 420 Hz, entropy and the EVU experience score per region and "
        "minute, from `region_metrics_1m` and `evu_1m` (SPEC 3 and 4). Read with `polars` and `deltalake`; "
        "the summary at the end with `duckdb`."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        '''\
metrics = pl.read_delta(table("region_metrics_1m"))
evu = pl.read_delta(table("evu_1m")).select("region", "window_start", "evu", "requests")
field = metrics.join(evu, on=["region", "window_start"], how="left").sort("region", "window_start")
print(f"{field.height} region-minutes, {field['region'].n_unique()} regions, "
      f"{field['window_start'].min()} .. {field['window_start'].max()}")
field.head()'''
    ),
    new_code_cell(
        '''\
panels = [("hz_mean", "mean Hz"), ("low_share", "share under 420 Hz"), ("entropy", "entropy"), ("evu", "EVU")]
fig, axes = plt.subplots(len(panels), 1, figsize=(11, 11), sharex=True)
for (column, label), ax in zip(panels, axes):
    for (region,), g in field.group_by("region", maintain_order=True):
        ax.plot(g["window_start"].to_list(), g[column].to_list(), label=region, linewidth=1.2)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
axes[0].axhline(420, color="crimson", linestyle="--", linewidth=1, label="420 Hz")
axes[1].axhline(0.5, color="crimson", linestyle=":", linewidth=1)
axes[0].legend(loc="upper right", ncol=4, fontsize=8)
axes[-1].set_xlabel("window start (UTC)")
fig.suptitle("The collective field, per region and minute")
fig.tight_layout()
plt.show()'''
    ),
    new_markdown_cell("Minutes in each state (`collapse` below 420 Hz, `expansion` from 700 Hz), per region:"),
    new_code_cell(
        '''\
states = field.group_by("region", "state").len().pivot(on="state", index="region", values="len").fill_null(0).sort("region")
states'''
    ),
    new_code_cell(
        '''\
con.sql(f"""
    SELECT m.region,
           round(avg(m.hz_mean), 1)   AS hz_mean,
           round(avg(m.low_share), 3) AS low_share,
           round(avg(m.entropy), 3)   AS entropy,
           round(avg(e.evu), 3)       AS evu,
           count(*)                   AS minutes
    FROM delta_scan('{table("region_metrics_1m")}') m
    LEFT JOIN delta_scan('{table("evu_1m")}') e USING (region, window_start)
    GROUP BY m.region ORDER BY m.region
""").pl()'''
    ),
]

COLLAPSE = [
    new_markdown_cell(
        "# Anatomy of a collapse\n\n"
        "The longest run of minutes in `collapse` (mean Hz under 420) in the lake: what the 10-minute "
        "forecast said against what happened, with its 80% and 95% bands (`collapse_forecast`, SPEC 5), "
        "its collapse probability, and the protective-mode alerts raised and cleared (`alerts`, SPEC 6)."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        '''\
metrics = pl.read_delta(table("region_metrics_1m")).sort("region", "window_start")
# Runs of consecutive collapse minutes per region; the longest one is the episode.
runs = (
    metrics.with_columns(is_collapse=pl.col("state") == "collapse")
    .with_columns(run=(pl.col("is_collapse") != pl.col("is_collapse").shift(1).over("region")).fill_null(True).cum_sum().over("region"))
    .filter(pl.col("is_collapse"))
    .group_by("region", "run")
    .agg(start=pl.col("window_start").min(), end=pl.col("window_end").max(), minutes=pl.len(), low_hz=pl.col("hz_mean").min())
    .sort("minutes", descending=True)
)
print(f"{runs.height} collapse episodes in the lake")
runs.head()'''
    ),
    new_code_cell(
        '''\
from datetime import timedelta
assert runs.height > 0, "no collapse in this lake: run the demo longer, or `campo backtest --scenario --lake ...`"
episode = runs.row(0, named=True)
region = episode["region"]
lo, hi = episode["start"] - timedelta(minutes=30), episode["end"] + timedelta(minutes=15)
actual = metrics.filter((pl.col("region") == region) & pl.col("window_end").is_between(lo, hi))
forecast = (
    pl.read_delta(table("collapse_forecast"))
    .filter((pl.col("region") == region) & (pl.col("horizon_min") == 10) & pl.col("target_window_end").is_between(lo, hi))
    .sort("target_window_end")
)
alerts = pl.read_delta(table("alerts")).filter(pl.col("region") == region).sort("window_end")
print(f"{region}: collapse for {episode['minutes']} minutes from {episode['start']} (lowest {episode['low_hz']:.0f} Hz); "
      f"{forecast.height} forecasts at 10 minutes, {alerts.height} alerts")'''
    ),
    new_code_cell(
        '''\
fig, (ax, axp) = plt.subplots(2, 1, figsize=(11, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
x = forecast["target_window_end"].to_list()
ax.fill_between(x, forecast["lo95"].to_list(), forecast["hi95"].to_list(), alpha=0.15, color="tab:blue", label="95% band")
ax.fill_between(x, forecast["lo80"].to_list(), forecast["hi80"].to_list(), alpha=0.3, color="tab:blue", label="80% band")
ax.plot(x, forecast["hz_forecast"].to_list(), color="tab:blue", linestyle="--", label="forecast 10 min ahead")
ax.plot(actual["window_end"].to_list(), actual["hz_mean"].to_list(), color="black", linewidth=1.6, label="mean Hz (what happened)")
ax.axhline(420, color="crimson", linewidth=1, linestyle=":", label="420 Hz")
ax.axvspan(episode["start"], episode["end"], color="crimson", alpha=0.08, label="collapse")
ax.set_ylabel("Hz")
ax.legend(loc="lower left", fontsize=8, ncol=3)
ax.set_title(f"{region}: the collapse from {episode['start']:%H:%M} and its 10-minute forecast")
axp.plot(x, forecast["p_collapse"].to_list(), color="tab:purple", label="p(collapse) at 10 min")
levels = {"off": 0, "soft": 1, "medium": 2, "hard": 3}
if alerts.height:
    t = [lo] + alerts["window_end"].to_list() + [hi]
    lv = [levels[alerts["previous_level"][0]]] + [levels[l] for l in alerts["level"].to_list()]
    lv = lv + [lv[-1]]
    axl = axp.twinx()
    axl.step(t, lv, where="post", color="darkorange", label="protective level")
    axl.set_yticks(range(4), list(levels))
    axl.set_ylim(-0.2, 3.4)
    for row in alerts.iter_rows(named=True):
        axl.annotate(row["level"], (row["window_end"], levels[row["level"]]), textcoords="offset points", xytext=(2, 4), fontsize=8)
axp.set_ylim(0, 1)
axp.set_ylabel("p(collapse)")
axp.set_xlabel("window end (UTC)")
axp.legend(loc="upper left", fontsize=8)
fig.tight_layout()
plt.show()'''
    ),
    new_markdown_cell("The alert timeline of the region (every level change with its reason):"),
    new_code_cell('alerts.select("window_end", "previous_level", "level", "reason", "hz_mean", "low_share", "p_collapse_10")'),
    new_markdown_cell("How far ahead the forecast saw it: the first minute before the episode with p(collapse) at 10 min of 0.5 or more."),
    new_code_cell(
        '''\
ahead = forecast.filter((pl.col("p_collapse") >= 0.5) & (pl.col("issued_at") <= episode["start"]))
if ahead.height:
    lead = (episode["start"] - ahead["issued_at"].min()).total_seconds() / 60
    print(f"first flagged at {ahead['issued_at'].min()}, {lead:.0f} minutes before the collapse began")
else:
    print("not flagged at 0.5 or more before it began")'''
    ),
]

QUALITY = [
    new_markdown_cell(
        "# Data quality\n\n"
        "What the contracts refused and why (`rejected`, SPEC 1), the duplicates dropped, the late events, "
        "the ingestion lag and how fresh every table is. Every consumed Kafka offset ends in exactly one of "
        "bronze, `rejected` or the duplicate count, so the duplicates are the offsets in neither table."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        '''\
rejected = pl.read_delta(table("rejected"))
by_reason = rejected.group_by("source_topic", "reason").len().sort("len", descending=True)
fig, ax = plt.subplots(figsize=(9, 3.5))
if by_reason.height:
    labels = [f"{t}\\n{r}" for t, r in zip(by_reason["source_topic"], by_reason["reason"])]
    ax.barh(labels, by_reason["len"].to_list(), color="tab:red")
    ax.invert_yaxis()
else:
    ax.text(0.5, 0.5, "no rejected records", ha="center", va="center", transform=ax.transAxes)
ax.set_xlabel("records")
ax.set_title(f"Invalid records by reason ({rejected.height} in all)")
fig.tight_layout()
plt.show()
by_reason'''
    ),
    new_code_cell(
        '''\
# Per topic and partition: offsets seen (first..last) minus those in bronze and in rejected.
rows = []
for bronze in ["readings", "activity"]:
    rows += con.sql(f"""
        WITH b AS (SELECT kafka_topic AS topic, kafka_partition AS p, kafka_offset AS o FROM delta_scan('{table(bronze)}')),
             r AS (SELECT source_topic AS topic, "partition" AS p, "offset" AS o FROM delta_scan('{table("rejected")}')
                   WHERE source_topic IN (SELECT DISTINCT topic FROM b)),
             allo AS (SELECT * FROM b UNION ALL SELECT * FROM r)
        SELECT '{bronze}' AS tbl, topic, p,
               max(o) - min(o) + 1 AS offsets,
               (SELECT count(*) FROM b WHERE b.topic = allo.topic AND b.p = allo.p) AS in_bronze,
               (SELECT count(*) FROM r WHERE r.topic = allo.topic AND r.p = allo.p) AS in_rejected
        FROM allo GROUP BY topic, p ORDER BY p
    """).fetchall()
accounting = pl.DataFrame(rows, schema=["table", "topic", "partition", "offsets", "in_bronze", "in_rejected"], orient="row")
accounting = accounting.with_columns(duplicates=pl.col("offsets") - pl.col("in_bronze") - pl.col("in_rejected"))
dups = accounting.group_by("table").agg(pl.col("duplicates").sum(), pl.col("offsets").sum()).sort("table")
late = pl.DataFrame([
    {"table": t, "late": int(d["late"].sum()), "rows": d.height}
    for t, d in ((t, pl.read_delta(table(t), columns=["late"])) for t in ["readings", "activity"])
])
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.5))
a1.bar(dups["table"].to_list(), dups["duplicates"].to_list(), color="tab:orange")
a1.set_title("duplicates dropped")
a2.bar(late["table"].to_list(), (late["late"] / late["rows"]).to_list(), color="tab:gray")
a2.set_title("share of bronze rows flagged late")
fig.tight_layout()
plt.show()
accounting'''
    ),
    new_markdown_cell(
        "Ingestion lag: `ingested_at - occurred_at` of every bronze row. For a live lake it is the pipeline's "
        "delay; for a replayed history (`campo backtest --scenario`) it is the age of the replay."
    ),
    new_code_cell(
        '''\
lag = pl.concat([
    pl.read_delta(table(t), columns=["occurred_at", "ingested_at"]).select(
        table=pl.lit(t), lag_s=(pl.col("ingested_at") - pl.col("occurred_at")).dt.total_milliseconds() / 1000)
    for t in ["readings", "activity"]
])
q = lag.group_by("table").agg(
    p50=pl.col("lag_s").quantile(0.5), p95=pl.col("lag_s").quantile(0.95), p99=pl.col("lag_s").quantile(0.99), max=pl.col("lag_s").max()
).sort("table")
fig, ax = plt.subplots(figsize=(9, 3.5))
for (t,), g in lag.group_by("table", maintain_order=True):
    ax.hist(g["lag_s"].to_list(), bins=60, alpha=0.6, label=t)
ax.set_xlabel("seconds from event to lake")
ax.set_ylabel("rows")
ax.set_title("Ingestion lag")
ax.legend()
fig.tight_layout()
plt.show()
q'''
    ),
    new_markdown_cell("Freshness: the latest version of every table, when it was committed, and its newest data."),
    new_code_cell(
        '''\
now = datetime.now(timezone.utc)
fresh = []
for name, col in [("readings", "occurred_at"), ("activity", "occurred_at"), ("rejected", "rejected_at"),
                  ("region_metrics_1m", "window_end"), ("evu_1m", "window_end"),
                  ("collapse_forecast", "issued_at"), ("alerts", "window_end")]:
    dt = deltalake.DeltaTable(table(name))
    last = dt.history(1)[0]
    committed = datetime.fromtimestamp(last["timestamp"] / 1000, tz=timezone.utc)
    newest = pl.read_delta(table(name), columns=[col])[col].max()
    fresh.append({"table": name, "version": dt.version(), "files": len(dt.file_uris()),
                  "committed": committed, "minutes_since_commit": round((now - committed).total_seconds() / 60, 1),
                  "newest_data": newest})
pl.DataFrame(fresh)'''
    ),
]


def write(name, cells):
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    path = os.path.join(HERE, name)
    with open(path, "w") as f:
        nbformat.write(nb, f)
    print("wrote", path)


if __name__ == "__main__":
    write("01_collective_field.ipynb", COLLECTIVE)
    write("02_anatomy_of_a_collapse.ipynb", COLLAPSE)
    write("03_data_quality.ipynb", QUALITY)
