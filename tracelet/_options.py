"""`ExporterOptions`, public as `tracelet.export.ExporterOptions`, in a module of its own.

It is a pydantic model, and importing pydantic costs about 0.1-0.3 s: kept
apart, ``import tracelet.export`` (a plug-in's import of the contract) costs
the standard library only, and pydantic loads when an exporter's options are
first defined or used.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ExporterOptions(BaseModel):
    """Base of each exporter's `config` options; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ExporterOptions.__module__ = "tracelet.export"  # where it is documented and pickled from
