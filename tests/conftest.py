"""Fixtures and options shared by the test files.

* ``bounds``: the bounds-checked, order-permuting interpreter mode (``tests/bounds.py``) for the
  duration of a test; its counters are summed into one line at the end of the session.
* ``SMI_KERNELS_BOUNDS=natural|reversed|permuted``: every test of the session runs under that
  checker (those that take their own aside), e.g. ``SMI_KERNELS_BOUNDS=reversed pytest
  tests/test_triton.py``.
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


@pytest.fixture(autouse=True)
def _bounds_everywhere(request):
    """With ``SMI_KERNELS_BOUNDS`` set to an order, the checker around every test."""
    order = os.environ.get("SMI_KERNELS_BOUNDS", "")
    own = "bounds_checker" in request.fixturenames or request.node.path.name == "test_bounds.py"
    if not order or own:
        yield
        return
    if order not in bounds.ORDERS:
        raise ValueError(f"SMI_KERNELS_BOUNDS must be one of {bounds.ORDERS}, got {order!r}")
    if not bounds.SUPPORTED:
        pytest.skip(f"SMI_KERNELS_BOUNDS: {bounds.UNSUPPORTED_REASON}")
    with bounds.Checker(order=order) as checker:
        yield
    assert not checker.totals.violations, "\n".join(checker.totals.violations)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if bounds.SESSION.launches:
        terminalreporter.write_line(f"bounds checker: {bounds.SESSION.summary()}")
