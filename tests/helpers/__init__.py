"""Helpers the tests share: plain functions, classes and constants, no fixtures.

Test modules import what they share from here, never from a ``conftest.py`` (which holds only
fixtures and hooks, and calls into these) nor from another ``test_*`` module
(``tests/unit/test_test_layout.py`` checks both). One module per job:

- ``processes``: this session's tag, and the QEMUs and children a test started or SIGINTs
- ``terminal``: pveoi's stderr, checked for tracebacks and library noise
- ``measurable``: skip (or, under ``PVEOI_REQUIRE_MEASURABLE``, fail) where PV EOI is not measurable
- ``bzimage``: a fake but well-formed bzImage, built in memory (boots nothing)
- ``kernels``: guest kernels with a planted bug from ``tests/fixtures/`` (real builds: tests/e2e only)
- ``cached``: what the machine's pveoi cache already holds (a fetched Debian kernel)
- ``results``: synthetic result documents and histories
- ``fake_ab``: an A/B ``Setup`` and a ``run_guest`` that boot nothing
- ``screens``: headless Chromium screenshots of a page
"""
