"""Run settings, read from arguments, a `TraceletSettings` object or `TRACELET_*` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["TraceletSettings"]


class TraceletSettings(BaseSettings):
    """Everything that shapes a run, besides the per-backend `config`.

    Every field can also be set through an environment variable named
    ``TRACELET_<FIELD>`` (for example ``TRACELET_BACKEND=mlflow,wandb``).
    A misspelled field is an error, never silently ignored.
    """

    model_config = SettingsConfigDict(
        env_prefix="TRACELET_", extra="forbid", validate_assignment=True
    )

    project: str | None = Field(
        default=None, description="Project: the MLflow experiment, W&B / ClearML project."
    )
    exp_name: str | None = Field(
        default=None, description="Run name on the trackers; generated when not given."
    )
    backend: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["mlflow"],
        description='Backends, as a list or a comma-separated string ("mlflow,wandb").',
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Backend options, as for start_logging's config (which wins key by key).",
    )
    track_system: bool = Field(default=True, description="Sample host, process and GPU metrics.")
    metrics_interval: float = Field(
        default=10.0, gt=0, description="Seconds between system samples and OTel exports."
    )
    track_git: bool = Field(default=True, description="Record commit, branch and dirty flag.")
    track_env: bool = Field(
        default=True, description="Record Python, platform and package versions."
    )
    dir: Path = Field(
        default=Path(".tracelet"),
        description="Where runs keep their journal (the local copy of every point).",
    )
    flush_interval: float = Field(
        default=0.2, gt=0, le=60, description="Seconds between history flushes to the exporters."
    )
    max_buffered_points: int = Field(
        default=200_000,
        ge=1_000,
        description="Points held in memory before log_metric waits for the journal writer.",
    )
    close_timeout: float = Field(
        default=60.0,
        ge=0,
        description=(
            "Seconds a backend may go without taking a point before the end of the run "
            "gives up on it and reports what it did not receive (a slow but live backend "
            "is given the time it needs)."
        ),
    )
    keep_journal: bool = Field(
        default=False,
        description="Keep the run's journal after every backend received every point.",
    )
    unmasked_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Param, tag and span-attribute keys kept in clear though their names look "
            'secret (e.g. ["sort_key"], or "sort_key,model/api_version_key").'
        ),
    )
    handle_signals: bool = Field(
        default=True,
        description="On SIGTERM, end the run (KILLED) before the process terminates.",
    )
    track_tensorboard: bool = Field(
        default=True,
        description="While the run is active, record SummaryWriter scalars, scalar groups "
        "and hparams (torch.utils.tensorboard and tensorboardX).",
    )
    track_lightning: bool = Field(
        default=True,
        description="Add a TraceletLogger to each Lightning Trainer built while the run is active.",
    )
    track_transformers: bool = Field(
        default=True,
        description='Make report_to="tracelet" name TraceletCallback in Hugging Face '
        "TrainingArguments while the run is active.",
    )

    delivery: Literal["agent", "thread"] = Field(
        default="agent",
        description=(
            'Where tracker I/O runs: "agent", a delivery process of its own, so no tracker '
            'SDK runs in the training process; "thread", threads of the training process '
            "(for places that cannot start a process)."
        ),
    )
    wait_for_delivery: bool = Field(
        default=True,
        description=(
            "stop_logging waits while the backends take the rest of the run, showing "
            "progress; False returns at once and the delivery agent finishes in the background."
        ),
    )
    agent_grace: float = Field(
        default=25.0,
        ge=0,
        description=(
            "Seconds the delivery agent goes on delivering after it receives SIGTERM "
            "(SLURM and Kubernetes wait 30 s by default before SIGKILL)."
        ),
    )
    run_id: str | None = Field(
        default=None,
        description=(
            "The run's id: a run that exists under it (in dir, or a tracker run tagged "
            "tracelet.run_id) is continued. 'auto': the job's previous run after a SLURM "
            "requeue or torchrun restart. Default: from the launcher (all ranks agree), "
            "else a new id."
        ),
    )
    ranks: Literal["zero", "all"] = Field(
        default="zero",
        description=(
            "Which ranks of a distributed job write the trackers: 'zero' (global rank 0; "
            "the others feed OTel telemetry only) or 'all' (every rank, names prefixed "
            "rank<N>/)."
        ),
    )
    log_checkpoints: Literal["off", "last", "best", "all"] = Field(
        default="off",
        description=(
            "Checkpoints the framework integrations log as artifacts: none (off), each "
            "under one name that the next replaces (last), the best (best), or all."
        ),
    )

    @field_validator("backend", "unmasked_keys", mode="before")
    @classmethod
    def _split_backends(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("backend")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("backend needs at least one name, e.g. 'mlflow'")
        return value
