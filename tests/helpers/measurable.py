"""Where PV EOI is not measurable: skip the test, or fail it where that must not happen (CI, the nightly)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

#: Set (to anything but 0) where a test must not skip because PV EOI is not measurable: CI and the nightly.
REQUIRE_MEASURABLE = "PVEOI_REQUIRE_MEASURABLE"


def not_measurable(reason: str) -> NoReturn:
    """Skip a test because PV EOI is not measurable here, or fail it under ``PVEOI_REQUIRE_MEASURABLE=1``.

    Every test that would skip on "not measurable" calls this, so a CI runner
    that lost its KVM (or its perf) turns red instead of silently green.

    :param reason: why it is not measurable (the verdict's reason, the capability error).
    """
    if os.environ.get(REQUIRE_MEASURABLE, "") not in ("", "0"):
        pytest.fail(f"PV EOI is not measurable here, and {REQUIRE_MEASURABLE} is set: {reason}", pytrace=False)
    pytest.skip(f"PV EOI is not measurable here: {reason}")
