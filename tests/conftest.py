"""Shared pytest fixtures.

``seed``: a reproducible RNG seed per test.  It is ``VREX_SEED`` when set, else drawn fresh, and
it is printed in the report of every failing test so the failure can be replayed with
``VREX_SEED=<seed> make test``.
"""

from __future__ import annotations

import os
import random

import pytest


@pytest.fixture
def seed(request) -> int:
    value = int(os.environ.get("VREX_SEED", random.randrange(1 << 31)))
    request.node.user_properties.append(("seed", value))
    return value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for key, value in item.user_properties:
            if key == "seed":
                report.sections.append(
                    ("seed", f"reproduce with: VREX_SEED={value} pytest '{item.nodeid}'")
                )
