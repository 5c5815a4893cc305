"""Shared set-up of the reliability suite.

The default run keeps each scenario short enough for CI. Set ``LOOPLANE_LONG=1`` to run the
long variants too (tests marked ``long``): more tasks, more kills, longer runs.
"""

from __future__ import annotations

import os

import pytest

LONG = os.environ.get("LOOPLANE_LONG", "").strip() not in {"", "0"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the long variants unless ``LOOPLANE_LONG=1``."""
    if LONG:
        return
    skip = pytest.mark.skip(reason="long variant: set LOOPLANE_LONG=1 to run it")
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(skip)
