"""Shared test setup. The control-plane fixtures live in cluster_fixtures.py (tests marked ``cluster``)."""

from __future__ import annotations

pytest_plugins = ["cluster_fixtures"]
