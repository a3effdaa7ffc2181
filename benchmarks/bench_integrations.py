"""Framework-integration benchmark: what TensorBoard capture and TraceletLogger cost.

- ``SummaryWriter.add_scalar`` per call with no run (TensorBoard alone; the
  patch removed by ``stop_logging``) and during a run (TensorBoard +
  tracelet), trials interleaved, same writer, medians and the ratio.
- A small Lightning ``fit`` (CPU, 400 steps, ``self.log`` every step) with
  its default ``TensorBoardLogger`` alone, and inside a tracelet run (a
  ``TraceletLogger`` added, TensorBoard capture on), trials interleaved,
  medians and the ratio reported.

- The capture's own cost, on a stand-in writer whose ``add_scalar`` does
  nothing (TensorBoard's own write costs tens of µs, and its noise hides it):
  unpatched, patched with no run active, patched during a run.

Run: ``.venv/bin/python -m benchmarks.bench_integrations [--repeats N]``
(``--out build/bench_integrations.json`` keeps the numbers).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._util import per_call_ns, table, write_json


def _settings(directory: Path) -> Any:
    from tracelet import TraceletSettings

    return TraceletSettings(
        track_system=False, track_git=False, track_env=False, dir=directory / ".tracelet"
    )


def bench_add_scalar(directory: Path, repeats: int, calls: int = 5_000) -> dict[str, float]:
    """TensorBoard's real writer, with no run and during a run, trials interleaved."""
    from torch.utils.tensorboard import SummaryWriter

    import tracelet

    writer = SummaryWriter(str(directory / "tb"))
    step = [0]

    def loop(n: int) -> None:
        add, s = writer.add_scalar, step[0]
        for i in range(s, s + n):
            add("train/loss", 0.5, i)
        step[0] = s + n

    loop(calls)  # warm-up: the event file opened, the writer thread running
    plain, captured = [], []
    for _ in range(repeats):
        plain.append(per_call_ns(loop, calls, 1))  # no run: TensorBoard alone
        tracelet.start_logging(
            "bench", "integrations", backend="memory", settings=_settings(directory)
        )
        captured.append(per_call_ns(loop, calls, 1))
        tracelet.stop_logging()  # the patch removed again
    writer.close()
    a, c = statistics.median(plain), statistics.median(captured)
    return {"tensorboard_ns": a, "captured_ns": c, "ratio": c / a}


def bench_capture_overhead(directory: Path, repeats: int, calls: int = 200_000) -> dict[str, float]:
    import types

    import tracelet
    from tracelet.integrations import tensorboard as tb

    class SummaryWriter:
        def add_scalar(self, tag: str, scalar_value: Any, global_step: Any = None) -> None:
            pass

        def add_scalars(self, main_tag: str, values: Any, global_step: Any = None) -> None:
            pass

        def add_hparams(self, hparam_dict: Any, metric_dict: Any) -> None:
            pass

    module = types.ModuleType("stand_in_writer")
    module.SummaryWriter = SummaryWriter  # type: ignore[attr-defined]
    writer = SummaryWriter()
    step = [0]

    def loop(n: int) -> None:
        add, s = writer.add_scalar, step[0]
        for i in range(s, s + n):
            add("train/loss", 0.5, i)
        step[0] = s + n

    unpatched = per_call_ns(loop, calls, repeats)
    tb.patch_writer(module)
    no_run = per_call_ns(loop, calls, repeats)
    tracelet.start_logging("bench", "integrations", backend="memory", settings=_settings(directory))
    tb.patch_writer(module)  # the run's start put every hook in place anew
    during = per_call_ns(loop, calls, repeats)
    tracelet.stop_logging()
    tb.unpatch()
    return {"unpatched_ns": unpatched, "patched_no_run_ns": no_run, "during_run_ns": during}


def bench_lightning(directory: Path, repeats: int, steps: int = 400) -> dict[str, float]:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import tracelet

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch: Any, _: int) -> Any:
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = DataLoader(TensorDataset(torch.randn(steps, 3)), batch_size=1)

    def fit(root: Path) -> float:
        trainer = pl.Trainer(
            default_root_dir=str(root),
            max_epochs=1,
            log_every_n_steps=1,
            accelerator="cpu",
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        t0 = time.perf_counter()
        trainer.fit(Tiny(), data)
        return time.perf_counter() - t0

    alone, traced = [], []
    for n in range(repeats + 1):  # the first pair warms up
        a = fit(directory / f"alone{n}")
        tracelet.start_logging(
            "bench", "integrations", backend="memory", settings=_settings(directory)
        )
        t = fit(directory / f"traced{n}")
        tracelet.stop_logging()
        if n:
            alone.append(a)
            traced.append(t)
    a, t = statistics.median(alone), statistics.median(traced)
    return {"tensorboard_logger_s": a, "with_tracelet_s": t, "ratio": t / a}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    for name in ("lightning", "lightning.pytorch", "tracelet"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        overhead = bench_capture_overhead(Path(tmp), args.repeats)
        scalar = bench_add_scalar(Path(tmp), args.repeats)
        fit = bench_lightning(Path(tmp), args.repeats)
    print(
        table(
            "capture overhead: a stand-in writer's add_scalar, per call (median)",
            ["when", "ns"],
            [
                ["unpatched", overhead["unpatched_ns"]],
                ["patched, no run active", overhead["patched_no_run_ns"]],
                ["patched, during a run (the point recorded)", overhead["during_run_ns"]],
            ],
        )
    )
    print()
    print(
        table(
            "SummaryWriter.add_scalar, per call (median)",
            ["when", "ns"],
            [
                ["no run (TensorBoard alone; the patch removed)", scalar["tensorboard_ns"]],
                ["during a run (captured)", scalar["captured_ns"]],
                ["ratio", scalar["ratio"]],
            ],
        )
    )
    print()
    print(
        table(
            "Lightning fit, 400 steps, self.log each step (median s)",
            ["loggers", "s"],
            [
                ["TensorBoardLogger", fit["tensorboard_logger_s"]],
                ["TensorBoardLogger + TraceletLogger (automatic)", fit["with_tracelet_s"]],
                ["ratio", fit["ratio"]],
            ],
        )
    )
    result = {"capture_overhead": overhead, "add_scalar": scalar, "lightning_fit": fit}
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
