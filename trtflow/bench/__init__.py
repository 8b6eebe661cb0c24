"""``trtflow bench``: measure the generated runner (report.py orchestrates; run.py, load.py, encoding.py measure)."""

#: ``bench --sweep`` values: report.run_bench runs the first three and the load sweeps, encoding.py the encoding one.
SWEEPS = ("memory", "batch", "precision", "encoding", "instances", "devices")
