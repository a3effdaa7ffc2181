"""The job a process belongs to, read from its launcher: one run id for all ranks and restarts.

Every rank of a distributed job calls `tracelet.start_logging` the same way
and must land in the same run, without talking to the others. The launcher
already gives every rank the same job identity in the environment:

- ``TRACELET_RUN_ID`` / ``start_logging(run_id=...)``: the id itself (wins);
- SLURM: ``SLURM_JOB_ID`` and ``SLURM_STEP_ID`` (one run per job step,
  i.e. per ``srun``); ``SLURM_RESTART_COUNT`` counts requeues of the same job
  id. A single process the batch script runs itself (no step) gets a new
  run each time, unless ``run_id="auto"``;
- torchrun / TorchElastic: ``TORCHELASTIC_RUN_ID`` (``--rdzv-id``; a fresh
  uuid per launch with ``--standalone``), ``TORCHELASTIC_RESTART_COUNT``
  counts the agent's restarts of the workers;
- MPI: ``PMIX_NAMESPACE`` (Open MPI 4+, PMIx launchers) or
  ``OMPI_MCA_ess_base_jobid`` (older Open MPI).

The run id is a UUID (hex, as a run started alone gets) derived from those
values, so every rank computes the same one. By default a restart (a SLURM
requeue, a torchrun worker restart) is a new run: its restart count is part
of the id. With ``run_id="auto"`` the restart counts are left out, so the
restarted job derives the id of its previous run and continues it
(`tracelet._resume`).

Rank, local rank and world size come from `tracelet._otel.launcher_attributes`
(the same variables the OTel Resource reports).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tracelet.errors import ConfigError
from tracelet.export import Batch

__all__ = ["AUTO", "Launch", "detect", "rank_prefix", "resolve_run_id"]

_log = logging.getLogger("tracelet")

#: ``run_id="auto"``: continue the job's previous run after a requeue or restart.
AUTO = "auto"
#: The namespace of derived run ids (a fixed, arbitrary UUID).
_NAMESPACE = uuid.UUID("5b1f3c1e-4f8e-4c55-9a59-7c1d0c6f7a21")
#: What a given run id may hold: it names a folder and a W&B run id.
_VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

Ranks = Literal["zero", "all"]


@dataclass(frozen=True)
class Launch:
    """Where this process stands in its job.

    Attributes:
        rank: global rank (0 when not launched as one of several processes).
        local_rank: rank on this node (0 alone).
        world_size: processes in the job (1 alone).
        job: the launcher's job identity, as ``("slurm", "123.0"), ...`` pairs;
            empty when no launcher told one.
        restarts: the launcher's restart counts (SLURM requeues, torchrun restarts).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    job: tuple[tuple[str, str], ...] = ()
    restarts: tuple[tuple[str, str], ...] = ()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.rank > 0

    def writes_trackers(self, ranks: Ranks) -> bool:
        """Whether this rank delivers to the trackers under the ``ranks`` policy."""
        return ranks == "all" or self.rank == 0

    def samples_system(self) -> bool:
        """Whether this rank samples the node: one per node (local rank 0)."""
        return self.local_rank == 0


def detect(environ: Mapping[str, str]) -> Launch:
    """The launch this process is part of, from launcher variables in `environ`."""
    # The variables the OTel Resource reports; imported here so that delivery
    # (which uses `rank_batch`) does not import the OTel SDK for it.
    from tracelet._otel import launcher_attributes

    ranks = launcher_attributes(environ)
    job: list[tuple[str, str]] = []
    restarts: list[tuple[str, str]] = []

    def value(name: str) -> str:
        return environ.get(name, "").strip()

    slurm_job = value("SLURM_JOB_ID") or value("SLURM_JOBID")
    if slurm_job:
        step = value("SLURM_STEP_ID") or value("SLURM_STEPID")
        job.append(("slurm", f"{slurm_job}.{step}" if step else slurm_job))
        if value("SLURM_RESTART_COUNT"):
            restarts.append(("slurm", value("SLURM_RESTART_COUNT")))
    elastic = value("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":  # "none": torchrun's default --rdzv-id, no identity
        job.append(("torchelastic", elastic))
    if value("TORCHELASTIC_RESTART_COUNT"):
        restarts.append(("torchelastic", value("TORCHELASTIC_RESTART_COUNT")))
    mpi = value("PMIX_NAMESPACE") or value("OMPI_MCA_ess_base_jobid")
    if mpi:
        job.append(("mpi", mpi))
    return Launch(
        rank=int(ranks.get("tracelet.rank", 0)),
        local_rank=int(ranks.get("tracelet.local_rank", 0)),
        world_size=int(ranks.get("tracelet.world_size", 1)),
        job=tuple(job),
        restarts=tuple(restarts),
    )


def resolve_run_id(given: str | None, launch: Launch) -> tuple[str, bool]:
    """The run id of this process, and whether it names a run that may exist already.

    Args:
        given: ``run_id`` as passed or set (``TRACELET_RUN_ID``): an id, `AUTO`, or None.
        launch: this process's launch (`detect`).

    Returns:
        ``(run_id, shared)``: `shared` is False for a fresh random id (a run
        started alone), True for an id given or derived from the launcher
        (other ranks, or an earlier part of the job, may use it too).

    Raises:
        ConfigError: a given id that cannot name a run.
    """
    if given is not None and given != AUTO:
        if not _VALID_ID.fullmatch(given):
            raise ConfigError(
                f"run_id {given!r} is not allowed: use 1 to 128 letters, digits, '_', '.' "
                "or '-', starting with a letter or digit"
            )
        return given, True
    job = launch.job
    if given is None and _batch_step(job) is not None and not launch.distributed:
        # A script run by the batch script itself (no srun): a job may run several
        # of those (a sweep), each its own run, unless run_id="auto" says otherwise.
        job = ()
    if given == AUTO and len(job) > 1 and job[0][0] == "slurm":
        # Under SLURM the job id survives a requeue; a standalone torchrun's
        # rendezvous id is new at every launch, so it must not take part.
        job = job[:1]
    if not job:
        if given == AUTO or launch.distributed:
            _log.warning(
                "rank %d of %d: no launcher variable identifies the job (SLURM_JOB_ID, "
                "TORCHELASTIC_RUN_ID via torchrun --rdzv-id, PMIX_NAMESPACE), so the ranks "
                "cannot agree on a run id%s; set TRACELET_RUN_ID to the same value on every "
                "rank",
                launch.rank,
                launch.world_size,
                " and a restarted job cannot find its run" if given == AUTO else "",
            )
        return uuid.uuid4().hex, False
    parts = (
        list(job) if given == AUTO else [*job, *(("restart." + k, v) for k, v in launch.restarts)]
    )
    key = ";".join(f"{k}={v}" for k, v in parts)
    return uuid.uuid5(_NAMESPACE, key).hex, True


def _batch_step(job: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...] | None:
    """`job` when it is only a SLURM job id without a step (the batch script's own process)."""
    if len(job) == 1 and job[0][0] == "slurm" and "." not in job[0][1]:
        return job
    return None


def rank_prefix(rank: int | None) -> str:
    """The metric-name prefix of `rank`'s points in the all-ranks mode (``rank3/``)."""
    return "" if rank is None else f"rank{rank}/"


def dir_suffix(launch: Launch) -> str:
    """What tells the ranks' run directories apart (``-rank3``) when they share ``dir``."""
    return f"-rank{launch.rank}" if launch.distributed else ""


def run_fields(launch: Launch, ranks: Ranks, shared: bool) -> dict[str, Any]:
    """What run.json keeps of the launch: the rank, and how the tracker runs are found.

    ``attach`` and ``tracker_rank`` are what `RunInfo` takes (`info_fields`), so
    a process that delivers the run later (``tracelet sync``) opens the same
    tracker runs with the same names.
    """
    all_ranks = ranks == "all" and launch.distributed
    if all_ranks and launch.rank != 0:
        attach = "join"  # rank 0 opens the tracker run; the others find it
    else:
        attach = "continue" if shared else "new"
    return {
        "rank": launch.rank,
        "local_rank": launch.local_rank,
        "world_size": launch.world_size,
        "ranks": ranks,
        "attach": attach,
        "tracker_rank": launch.rank if all_ranks else None,
    }


def info_fields(run: Mapping[str, Any]) -> dict[str, Any]:
    """`RunInfo`'s ``attach`` and ``rank`` from run.json (defaults for a run that kept none)."""
    rank = run.get("tracker_rank")
    return {"attach": str(run.get("attach") or "new"), "rank": None if rank is None else int(rank)}


def resource(launch: Launch, run_id: str) -> dict[str, Any]:
    """Resource attributes that tell the ranks of one run apart.

    Every rank carries the job's ``tracelet.run_id`` (dashboards join on it)
    and its rank (`tracelet._otel.resource_attributes`); ``service.instance.id``
    must be unique per process (OTel semantic conventions), so every rank of
    a distributed job gets ``<run id>-rank<N>``.
    """
    from tracelet._otel import env_resource_keys

    if not launch.distributed or "service.instance.id" in env_resource_keys(
        os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    ):
        return {}
    return {"service.instance.id": f"{run_id}-rank{launch.rank}"}


def rank_batch(batch: Batch, rank: int) -> Batch:
    """`batch` as rank `rank` delivers it in the all-ranks mode.

    Metric names get the ``rank<N>/`` prefix (every rank, 0 included, so each
    series names its rank). Params and tags are the run's, written by rank 0
    alone: the other ranks' would repeat them, or clash where a rank's value
    differs (MLflow refuses a param changed).
    """
    prefix = rank_prefix(rank)
    metrics = [p._replace(name=prefix + p.name) for p in batch.metrics]
    if rank == 0:
        return Batch(metrics, batch.params, batch.tags)
    return Batch(metrics)


class NamesOnly:
    """The history queue of a rank that writes no tracker: nothing is kept or journaled.

    Producers append to it as to the real queue (one door for every rank); a
    metric name seen for the first time is handed to `on_names` (the run's
    OTel gauges), as the journal thread does on a rank that journals, and it
    keeps the run's telemetry view (`view`, `latest`) as the writer does
    there. Its length is always 0, so producers never wake or wait for a
    journal writer.
    """

    __slots__ = ("_names", "_on_names", "latest", "logged", "top_step")

    def __init__(self, on_names: Callable[[set[str]], None]) -> None:
        self._names: set[str] = set()
        self._on_names = on_names
        self.latest: dict[str, float] = {}
        self.logged = 0
        self.top_step = -1

    def append(self, record: tuple[Any, ...]) -> None:
        if len(record) != 4:
            return
        name, value, step, _ = record
        if name not in self._names:
            self._names.add(name)
            self._on_names({name})
        self.latest[name] = value
        self.logged += 1
        if step > self.top_step:
            self.top_step = step

    def view(self) -> tuple[int, int]:
        """``(points, highest step)`` logged (see `tracelet._history.History.view`)."""
        return self.logged, self.top_step

    def __len__(self) -> int:
        return 0
