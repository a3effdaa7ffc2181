"""Framework integrations: what training code logs through a framework reaches tracelet.

One module per framework, each importing its framework only when it is used
(``import tracelet`` never imports this package):

- `tracelet.integrations.tensorboard`: ``SummaryWriter`` calls (torch's and
  tensorboardX's) recorded while a run is active (``track_tensorboard``);
- `tracelet.integrations.lightning`: `TraceletLogger`, a Lightning ``Logger``,
  added to a ``Trainer`` built during a run (``track_lightning``);
- `tracelet.integrations.transformers`: `TraceletCallback`, a Hugging Face
  ``TrainerCallback`` (``report_to="tracelet"`` during a run, ``track_transformers``);
- `tracelet.integrations.accelerate`: `TraceletTracker`, an Accelerate ``GeneralTracker``;
- `tracelet.integrations.keras`: `TraceletCallback`, a Keras 3 callback.

Each only translates the framework's calls into `tracelet.start_logging`,
`tracelet.get_active_experiment` and `tracelet.Experiment`'s ``log_*``
methods, so every point gets what `log_metric` gives it: exactly once, on
every backend, journaled, and as OTel telemetry.
"""

from __future__ import annotations

__all__: list[str] = []
