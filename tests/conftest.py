"""Shared pytest fixtures.

``seed``: a reproducible RNG seed per test.  It is ``VREX_SEED`` when set, else drawn fresh, and
it is printed in the report of every failing test so the failure can be replayed with
``VREX_SEED=<seed> make test``.

Verilator's model is compiled at ``-O0`` (``SIM_OPT=0``, see ``verif/runner.py``) for every
test not marked ``regress``: their co-simulations are short, so the C++ compile dominates and
``-O0`` compiles fastest.  The long ``regress`` runs keep Verilator's default ``-Os``, whose
model simulates faster.  A ``SIM_OPT`` set in the environment wins over both.  The measured
build and simulation times are in docs/ecosystem.md.
"""

from __future__ import annotations

import gc
import os
import random
import warnings

import pytest
from amaranth.hdl import UnusedElaboratable


def env_seed() -> int | None:
    """``VREX_SEED`` as an integer, None when unset; a malformed value is a usage error."""
    raw = os.environ.get("VREX_SEED")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise pytest.UsageError(f"VREX_SEED={raw!r} must be a non-negative integer")
    return int(raw)


def pytest_configure(config):
    env_seed()  # fail before collecting anything


@pytest.fixture(autouse=True)
def _short_sim_builds(request, monkeypatch):
    if "SIM_OPT" not in os.environ and request.node.get_closest_marker("regress") is None:
        monkeypatch.setenv("SIM_OPT", "0")


@pytest.fixture
def seed(request) -> int:
    value = env_seed()
    if value is None:
        value = random.randrange(1 << 31)
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


def pytest_runtest_teardown(item):
    """A test marked ``filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")`` builds
    components it never elaborates (to check their parameters, or a board top whose build is
    stubbed out).  Some of them sit in reference cycles (a ``pytest.raises`` traceback holds the
    half-built object), so they were freed at a later garbage collection, which printed the
    warning under another test, outside the mark.  Free them here, the warning still ignored."""
    if any("UnusedElaboratable" in str(m.args) for m in item.iter_markers("filterwarnings")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusedElaboratable)
            gc.collect()
