"""Tracker exporters, one module per backend, found through the ``tracelet.exporters`` entry points.

Each imports its SDK inside the exporter, never at module import, so
``import tracelet`` stays light whatever is installed.
"""
