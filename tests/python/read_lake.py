"""Reads a campo lake with three independent readers and prints their counts as JSON.

Usage: read_lake.py LAKE_DIR [TABLE ...]   (default: readings activity rejected)
"""
import glob
import json
import os
import sys

import deltalake
import duckdb
import duckdb_extension_delta
import polars as pl

lake = sys.argv[1]
tables = sys.argv[2:] or ["readings", "activity", "rejected"]
out = {"deltalake": {}, "polars": {}, "duckdb": {}}

for t in tables:
    path = os.path.join(lake, t)
    out["deltalake"][t] = deltalake.DeltaTable(path).to_pyarrow_table().num_rows
    out["polars"][t] = pl.read_delta(path).height

ext_dir = os.path.dirname(duckdb_extension_delta.__file__)
ext = glob.glob(os.path.join(ext_dir, "**", "delta.duckdb_extension"), recursive=True)
if not ext:
    sys.exit(f"no delta.duckdb_extension under {ext_dir}")
con = duckdb.connect()
con.execute(f"LOAD '{ext[0]}'")
for t in tables:
    path = os.path.join(lake, t)
    out["duckdb"][t] = con.execute(f"SELECT count(*) FROM delta_scan('{path}')").fetchone()[0]

by_region = pl.read_delta(os.path.join(lake, "readings")).group_by("region").len()
out["polars_by_region"] = {r: n for r, n in by_region.iter_rows()}
print(json.dumps(out))
