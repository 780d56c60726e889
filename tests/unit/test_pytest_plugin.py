"""pveoi's pytest plugin (e2e/pytest_plugin.py, registered by the pytest11 entry point), run
through pytester as another project's test suite would use it."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]

NOT_DIRECT = '''
import pytest
from e2e.host.decision import Decision

@pytest.fixture(scope="session")
def pveoi_kvm():
    return Decision("virtual", "/dev/kvm is backed by kvm_pvm", False)

@pytest.fixture(scope="session")
def pveoi_kernel():
    raise AssertionError("a skipped kvm test must not build a kernel")
'''


def test_the_plugin_is_registered_by_its_entry_point() -> None:
    eps = [ep for ep in entry_points(group="pytest11") if ep.name == "pveoi"]
    assert [ep.value for ep in eps] == ["e2e.pytest_plugin"]


def test_options_and_markers(pytester: pytest.Pytester) -> None:
    help_text = pytester.runpytest("--help").stdout.str()
    assert "pveoi: KVM/QEMU guests as fixtures" in help_text
    for option in ("--pveoi-kernel", "--pveoi-accel", "--pveoi-smp", "--pveoi-pv-eoi", "--pveoi-results"):
        assert option in help_text
    markers = pytester.runpytest("--markers").stdout.str()
    assert "@pytest.mark.pveoi_guest(" in markers and "@pytest.mark.kvm:" in markers


def test_a_bad_option_is_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(pveoi_options): pass\n")
    result = pytester.runpytest("--pveoi-smp", "0")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--pveoi-smp 0 is not in 1..64*"])


def test_kvm_tests_skip_with_the_reason_and_fix_before_building_anything(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(NOT_DIRECT)
    pytester.makepyfile('''
import pytest

@pytest.mark.kvm
def test_guest(pveoi_guest):
    raise AssertionError("not reached")

@pytest.mark.kvm
def test_ab(pveoi_ab):
    pveoi_ab(runs=1)
    raise AssertionError("not reached")

@pytest.mark.kvm
def test_kvm_reached_another_way():
    pass  # e.g. through the virtual KVM host: the plugin leaves it alone
''')
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=2, passed=1)
    result.stdout.fnmatch_lines(["*KVM is not usable directly: /dev/kvm is backed by kvm_pvm*fix: run this test on "
                                 "a host where `pveoi doctor` says direct*"])


def test_a_not_measurable_host_names_the_doctors_fix(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(NOT_DIRECT.replace('Decision("virtual", "/dev/kvm is backed by kvm_pvm", False)',
                                             'Decision("not-measurable", "no /dev/kvm", False, "modprobe kvm_amd")'))
    pytester.makepyfile("import pytest\n@pytest.mark.kvm\ndef test_guest(pveoi_guest): pass\n")
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*KVM is not usable: no /dev/kvm; fix: modprobe kvm_amd*"])


def test_unknown_marker_arguments_fail_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import pytest\n@pytest.mark.pveoi_guest(vcpus=4)\ndef test_g(pveoi_guest): pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown pveoi_guest marker argument(s)*vcpus*"])
