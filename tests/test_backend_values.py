"""What each tracker stores for -0.0 and for non-ASCII names, as the backend pages say.

Read back from the real stores: MLflow's sqlite store, W&B's ``.wandb`` file,
ClearML's offline session.
"""

from __future__ import annotations

import math
from pathlib import Path

import tracelet
from tests._helpers import QUIET
from tests._trackers import read_back, wandb_written

NAME = "损失/épsilon"  # letters of other scripts: MLflow's names allow any \w


def test_negative_zero_and_non_ascii_names_as_each_tracker_stores_them(
    offline_trackers: Path, mlflow_uri: str
) -> None:
    exp = tracelet.start_logging(
        "values",
        backend=["mlflow", "wandb", "clearml"],
        config={"mlflow": {"tracking_uri": mlflow_uri}},
        settings=QUIET,
    )
    exp.log_metric("zero", -0.0, iteration=0)
    exp.log_metric(NAME, 1.5, iteration=0)
    exp.log_params({"neg": -0.0, "naïve": "oui"})
    assert exp.end().complete
    wandb_written()
    sign = {}
    for backend in ("mlflow", "wandb", "clearml"):
        stored = read_back(exp.run_dir, backend)
        [(step, value)] = stored.series["zero"]
        assert step == 0 and value == 0.0
        sign[backend] = math.copysign(1.0, value)
        assert stored.series[NAME] == [(0, 1.5)], backend  # stored under its own name
        assert stored.params["naïve"] == "oui" and stored.params["neg"] == "-0.0", backend
    # MLflow's SQL store and W&B keep 0.0; ClearML's event keeps the sign.
    assert sign == {"mlflow": 1.0, "wandb": 1.0, "clearml": -1.0}
