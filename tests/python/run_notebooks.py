"""Executes notebooks headless (nbclient) on a lake and prints, as JSON, per notebook the cells
run and the figures drawn. Exits non-zero, naming the cell, on the first cell error.

Usage: run_notebooks.py LAKE_DIR NOTEBOOK.ipynb [...]
"""
import json
import os
import sys
import tempfile

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

lake, notebooks = os.path.abspath(sys.argv[1]), sys.argv[2:]
os.environ["CAMPO_LAKE"] = lake
# A kernel spec naming this very interpreter (the venv's), so no kernel installed elsewhere on
# the machine is picked instead.
spec_root = tempfile.mkdtemp(prefix="campo-kernels-")
os.makedirs(os.path.join(spec_root, "kernels", "campo-python"))
with open(os.path.join(spec_root, "kernels", "campo-python", "kernel.json"), "w") as f:
    json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
               "display_name": "campo (venv)", "language": "python"}, f)
os.environ["JUPYTER_PATH"] = spec_root
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
out = {}
for path in notebooks:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="campo-python",
                            resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
    try:
        client.execute()
    except CellExecutionError as e:
        sys.exit(f"{os.path.basename(path)}: a cell failed:\n{e}")
    code = [c for c in nb.cells if c.cell_type == "code"]
    figures = sum(1 for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    errors = sum(1 for c in code for o in c.get("outputs", []) if o.get("output_type") == "error")
    out[os.path.basename(path)] = {"cells": len(code), "figures": figures, "errors": errors}
print(json.dumps(out))
