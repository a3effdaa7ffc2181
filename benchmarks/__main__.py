"""Run every benchmark: ``python -m benchmarks`` (``--only core`` for one)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util

SUITES = ("core", "loop", "backends", "otlp", "system", "full", "resume", "integrations", "ranks")

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--only", choices=SUITES, action="append")
args = parser.parse_args()
for suite in args.only or SUITES:
    name = f"benchmarks.bench_{suite}"
    if importlib.util.find_spec(name) is None:
        continue
    print(f"\n#### {name}\n")
    importlib.import_module(name).main([])
