"""1,000,000 points in a tight loop to three trackers: all delivered, none twice, memory bounded.

The run happens in a child process so its peak RSS is its own. The stated
bound: once the run has started (each tracker's SDK imported and its run
opened), the process's peak RSS grows by less than ``RSS_GROWTH_BOUND_MB``
beyond what the ``memory`` test double itself stores (it keeps every point it
receives, about 200 bytes each, by design; measured in the child). Nothing
else grows with the number of points: past the in-memory bound
(``max_buffered_points``, 200,000 records by default) points are in the
journal on disk, and each delivery thread holds one batch at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from tests._reliability import assert_exactly_once, mlflow_history, mlflow_run, spawn

N = 1_000_000
METRICS = ("train/loss", "train/acc", "lr", "grad_norm")
#: Stated bound on peak RSS growth over the started run, besides the double's storage, in MB.
RSS_GROWTH_BOUND_MB = 150

CHILD = """
import json, math, os, resource, sys, time
import psutil
import tracelet
from tracelet import TraceletSettings
from tracelet.testing import InMemoryExporter

N = %(n)d
METRICS = %(metrics)r
proc = psutil.Process()
settings = TraceletSettings(track_system=False, track_git=False, track_env=False,
                            close_timeout=900)
exp = tracelet.start_logging("million", "reliability", backend=["mlflow", "memory", "clearml"],
                             config={"mlflow": {"tracking_uri": os.environ["TEST_URI"]}},
                             settings=settings)
exp.log_params({"n": N})
while not all(d.started for d in exp._deliveries):  # SDKs imported, tracker runs open
    time.sleep(0.05)
def peak_bytes():
    # VmHWM, reset at the start below: ru_maxrss would count the RSS of the process
    # that spawned this one (the test runner, with frameworks loaded), which the
    # kernel carries over into a child's peak at exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

if os.path.exists("/proc/self/clear_refs"):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak so far is the resident size now
rss = {"started": proc.memory_info().rss}
t0 = time.perf_counter()
log = exp.log_metric
for i in range(N):
    log(METRICS[i %% 4], math.sin(i), i // 4)
    if i == N // 4:
        rss["quarter"] = proc.memory_info().rss
loop_s = time.perf_counter() - t0
rss["loop_end"] = proc.memory_info().rss
t1 = time.perf_counter()
report = exp.end()
close_s = time.perf_counter() - t1
rss["end"] = proc.memory_info().rss
peak = peak_bytes()  # before the checks below
mem = InMemoryExporter.runs[exp.run_id]
names = {}
double_bytes = sys.getsizeof(mem.metrics)
for p in mem.metrics:  # what the test double holds: its own storage, not tracelet's
    double_bytes += sys.getsizeof(p) + sys.getsizeof(p.value) + sys.getsizeof(p.step)
    double_bytes += sys.getsizeof(p.timestamp_ns)
    if id(p.name) not in names:
        names[id(p.name)] = sys.getsizeof(p.name)
double_bytes += sum(names.values())
seen = {}
dupes = 0
order_ok = True
for p in mem.metrics:
    key = (p.name, p.step)
    dupes += key in seen
    seen[key] = p.value
    last = seen.get(("_last", p.name), -1)
    order_ok &= p.step > last
    seen[("_last", p.name)] = p.step
print(json.dumps({
    "run_id": exp.run_id, "run_dir": str(exp.run_dir), "complete": report.complete,
    "points": report.points, "loop_s": loop_s, "close_s": close_s,
    "backends": {b.backend: [b.delivered, b.undelivered] for b in report.backends},
    "memory_points": len(mem.metrics), "memory_dupes": dupes, "memory_order": order_ok,
    "rss": rss, "peak_rss": peak,
    "blocked": exp._history.blocked, "double_bytes": double_bytes,
}))
"""


@pytest.mark.slow
def test_a_million_points_to_three_trackers(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    pytest.importorskip("clearml")
    from tests._trackers import read_clearml

    uri = mlflow_store(tmp_path / "mlflow.db")  # the child opens this migrated copy
    proc = spawn(
        CHILD % {"n": N, "metrics": METRICS},
        tmp_path,
        TEST_URI=uri,
        CLEARML_OFFLINE_MODE="1",
        CLEARML_CACHE_DIR=str(tmp_path / "clearml"),
    )
    out, err = proc.communicate(timeout=1500)
    assert proc.returncode == 0, err[-5000:]
    result = json.loads(out.strip().splitlines()[-1])
    mb = {k: v / 2**20 for k, v in result["rss"].items()}
    peak_mb = result["peak_rss"] / 2**20
    double_mb = result["double_bytes"] / 2**20
    print(
        f"\n{N:,} points: loop {result['loop_s']:.1f} s ({N / result['loop_s']:,.0f}/s), "
        f"close {result['close_s']:.1f} s; RSS started {mb['started']:.0f} MB, a quarter "
        f"in {mb['quarter']:.0f} MB, loop end {mb['loop_end']:.0f} MB, end {mb['end']:.0f} MB, "
        f"peak {peak_mb:.0f} MB, of which the memory double's own storage {double_mb:.0f} MB; "
        f"producer waits: {result['blocked']}"
    )
    assert result["complete"] and result["points"] == N
    assert result["backends"] == {b: [N, 0] for b in ("mlflow", "memory", "clearml")}
    assert result["memory_points"] == N and result["memory_dupes"] == 0
    assert result["memory_order"]
    assert peak_mb - mb["started"] - double_mb < RSS_GROWTH_BOUND_MB

    run = mlflow_run(uri, result["run_id"])
    assert run.info.status == "FINISHED"
    for k, name in enumerate(METRICS):
        history = mlflow_history(uri, run.info.run_id, name)
        assert_exactly_once([s for s, _, _ in history], range(N // 4), f"mlflow {name}")
        assert all(v == math.sin(4 * s + k) for s, v, _ in history[:1000])

    state = json.loads((Path(result["run_dir"]) / "clearml.state.json").read_text())
    stored = read_clearml(state["resume"])
    total = 0
    for name in METRICS:
        points = stored.series[name]
        total += len(points)
        assert_exactly_once([s for s, _ in points], range(N // 4), f"clearml {name}")
    assert total == N
