"""Fixtures and options shared by the test files.

* ``bounds``: the bounds-checked, order-permuting interpreter mode (``tests/bounds.py``) for the
  duration of a test; its counters are summed into one line at the end of the session.
* ``slow``-marked tests run only when asked for: ``SMI_KERNELS_SLOW_TESTS=1``, or a ``-m``
  expression that names ``slow`` (``pytest -m slow``). Plain ``pytest`` (CI) skips them, as the
  ``network`` tests are skipped without ``SMI_KERNELS_NETWORK_TESTS=1``.
"""

from __future__ import annotations

import os

import bounds
import pytest


def _slow_selected(config: pytest.Config) -> bool:
    return os.environ.get("SMI_KERNELS_SLOW_TESTS") == "1" or "slow" in (
        config.getoption("-m") or ""
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _slow_selected(config):
        return
    skip = pytest.mark.skip(reason="slow: runs with SMI_KERNELS_SLOW_TESTS=1 or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def bounds_checker():
    """An active :class:`bounds.Checker` (natural order; ``checker.ordered(...)`` changes it).
    A violation raises where it happens; one that the code under test swallowed still fails the
    test here."""
    if not bounds.SUPPORTED:
        pytest.skip(f"the bounds checker does not support this triton: "
                    f"{bounds.UNSUPPORTED_REASON}")  # fmt: skip
    with bounds.Checker() as checker:
        yield checker
    assert not checker.totals.violations, "\n".join(checker.totals.violations)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if bounds.SESSION.launches:
        terminalreporter.write_line(f"bounds checker: {bounds.SESSION.summary()}")
