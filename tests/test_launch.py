"""The job's identity from launcher variables: every rank derives the same run id."""

from __future__ import annotations

import pytest

from tests._helpers import QUIET
from tracelet import _launch
from tracelet.errors import ConfigError
from tracelet.export import Batch, MetricPoint

TORCHRUN = {
    "TORCHELASTIC_RUN_ID": "f00d",
    "TORCHELASTIC_RESTART_COUNT": "0",
    "WORLD_SIZE": "4",
}
SLURM = {"SLURM_JOB_ID": "778", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "4"}


def _ranks(env: dict[str, str], n: int, rank_var: str, local_var: str) -> list[str]:
    ids = set()
    for rank in range(n):
        launch = _launch.detect({**env, rank_var: str(rank), local_var: str(rank % 2)})
        assert launch.rank == rank and launch.local_rank == rank % 2
        ids.add(_launch.resolve_run_id(None, launch))
    return list(ids)


@pytest.mark.parametrize(
    ("env", "rank_var", "local_var"),
    [
        (TORCHRUN, "RANK", "LOCAL_RANK"),
        (SLURM, "SLURM_PROCID", "SLURM_LOCALID"),
        (
            {"PMIX_NAMESPACE": "prterun-x-1", "OMPI_COMM_WORLD_SIZE": "4"},
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_LOCAL_RANK",
        ),
    ],
)
def test_every_rank_derives_the_same_run_id(
    env: dict[str, str], rank_var: str, local_var: str
) -> None:
    [(run_id, shared)] = _ranks(env, 4, rank_var, local_var)
    assert shared and len(run_id) == 32 and int(run_id, 16) >= 0


def test_another_job_or_a_restart_is_another_run_unless_auto() -> None:
    first = _launch.resolve_run_id(None, _launch.detect({**SLURM, "SLURM_PROCID": "0"}))
    other = _launch.resolve_run_id(None, _launch.detect({**SLURM, "SLURM_JOB_ID": "779"}))
    requeued_env = {**SLURM, "SLURM_RESTART_COUNT": "1"}
    requeued = _launch.resolve_run_id(None, _launch.detect(requeued_env))
    assert len({first, other, requeued}) == 3
    # "auto": a requeued job continues its previous run; under SLURM the
    # standalone torchrun's fresh rendezvous id does not count.
    auto_first = _launch.resolve_run_id("auto", _launch.detect({**SLURM, **TORCHRUN}))
    auto_again = _launch.resolve_run_id(
        "auto",
        _launch.detect({**requeued_env, **TORCHRUN, "TORCHELASTIC_RUN_ID": "beef"}),
    )
    assert auto_first == auto_again
    restarted = {**TORCHRUN, "TORCHELASTIC_RESTART_COUNT": "2"}
    assert _launch.resolve_run_id("auto", _launch.detect(restarted)) == _launch.resolve_run_id(
        "auto", _launch.detect(TORCHRUN)
    )


def test_explicit_id_wins_and_is_checked() -> None:
    launch = _launch.detect(TORCHRUN)
    assert _launch.resolve_run_id("exp-42.a", launch) == ("exp-42.a", True)
    with pytest.raises(ConfigError, match="run_id 'a/b'"):
        _launch.resolve_run_id("a/b", launch)


def test_no_launcher_gives_a_fresh_id(caplog: pytest.LogCaptureFixture) -> None:
    alone = _launch.detect({})
    assert not alone.distributed and alone.writes_trackers("zero")
    a, b = _launch.resolve_run_id(None, alone), _launch.resolve_run_id(None, alone)
    assert a[0] != b[0] and not a[1]
    # Ranks without a job id cannot agree: said once, with the way out.
    _launch.resolve_run_id(None, _launch.detect({"RANK": "1", "WORLD_SIZE": "2"}))
    assert "TRACELET_RUN_ID" in caplog.text
    # torchrun's default --rdzv-id is "none": no identity.
    assert _launch.detect({"TORCHELASTIC_RUN_ID": "none"}).job == ()


def test_rank_policy_and_names() -> None:
    rank1 = _launch.detect({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert not rank1.writes_trackers("zero") and rank1.writes_trackers("all")
    assert not rank1.samples_system()
    assert _launch.run_fields(rank1, "all", True)["attach"] == "join"
    assert _launch.run_fields(rank1, "zero", True)["tracker_rank"] is None
    batch = Batch([MetricPoint("loss", 1.0, 3, 7)], {"lr": 0.1}, {"t": "x"})
    ranked = _launch.rank_batch(batch, 1)
    assert ranked.metrics == [MetricPoint("rank1/loss", 1.0, 3, 7)]
    assert not ranked.params and not ranked.tags  # written by rank 0 alone
    assert _launch.rank_batch(batch, 0).params == {"lr": 0.1}


def test_settings_take_run_id_and_ranks_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACELET_RUN_ID", "auto")
    monkeypatch.setenv("TRACELET_RANKS", "all")
    from tracelet import TraceletSettings

    s = TraceletSettings()
    assert (s.run_id, s.ranks) == ("auto", "all")
    assert QUIET.ranks == "zero"


def test_a_batch_script_process_is_its_own_run_unless_auto() -> None:
    batch = _launch.detect({"SLURM_JOB_ID": "900"})  # python run by sbatch itself, no srun
    assert not _launch.resolve_run_id(None, batch)[1]
    assert _launch.resolve_run_id("auto", batch) == _launch.resolve_run_id("auto", batch)
    assert _launch.resolve_run_id("auto", batch)[1]
