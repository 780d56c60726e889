"""Unit tests for e2e.model.workloads: lookup by name and the guest argv."""

from __future__ import annotations

import pytest

from e2e.errors import ConfigError
from e2e.model.workloads import WORKLOADS, Workload, get_workloads


def test_get_workloads_in_the_order_asked() -> None:
    got = get_workloads(["net", "timer"])
    assert [w.name for w in got] == ["net", "timer"]
    assert got[1] is WORKLOADS["timer"]
    assert get_workloads(("ipi",)) == [WORKLOADS["ipi"]]
    assert get_workloads([]) == []


def test_get_workloads_unknown_name() -> None:
    with pytest.raises(ConfigError, match="unknown workload 'disk'") as info:
        get_workloads(["timer", "disk"])
    fix = str(info.value.fix)
    for name in WORKLOADS:
        assert name in fix, f"the fix lists the known workloads ({name} missing)"


def test_get_workloads_is_case_sensitive() -> None:
    with pytest.raises(ConfigError):
        get_workloads(["Timer"])


def test_registry_is_consistent() -> None:
    assert set(WORKLOADS) == {"timer", "ipi", "block", "net"}
    for name, w in WORKLOADS.items():
        assert w.name == name
        assert w.command and all(isinstance(a, str) for a in w.command)
        assert w.ops > 0 and w.smp >= 1 and w.timeout > 0 and w.description
        assert w.command[0] in w.needs, f"{name}'s binary is declared in needs"
    assert WORKLOADS["ipi"].smp >= 2, "IPIs need a second vCPU"
    assert WORKLOADS["block"].scratch_mb > 0
    assert [n for n, w in WORKLOADS.items() if w.scratch_mb] == ["block"]
    assert [n for n, w in WORKLOADS.items() if w.host_server] == ["net"]


def test_argv_substitutes_the_port() -> None:
    net = WORKLOADS["net"]
    argv = net.argv(5201)
    assert argv == ["iperf3", "-c", "10.0.2.2", "-p", "5201", "-n", "8M", "-l", "16K"]
    assert "{port}" in net.command, "the declaration itself is untouched"
    assert "{port}" in net.host_server
    assert net.argv(40000)[4] == "40000"


def test_argv_without_a_port_leaves_the_placeholder() -> None:
    assert WORKLOADS["net"].argv()[4] == "{port}"
    assert WORKLOADS["net"].argv(None) == list(WORKLOADS["net"].command)


@pytest.mark.parametrize("name", ["ipi", "block"])
def test_argv_of_portless_workloads(name: str) -> None:
    w = WORKLOADS[name]
    assert w.argv() == list(w.command)
    assert w.argv(1234) == list(w.command)
    assert w.argv(vcpus=4) == list(w.command), "only a pinned workload gets taskset"
    assert isinstance(w.argv(), list)


def test_every_workload_has_a_second_vcpu_by_default() -> None:
    # The arm proof must see a second vCPU, so a per-CPU enabling bug fails every workload.
    assert all(w.smp >= 2 for w in WORKLOADS.values())


def test_timer_runs_on_the_last_vcpu() -> None:
    timer = WORKLOADS["timer"]
    assert timer.pin_last_cpu
    assert timer.argv() == ["taskset", "-c", str(timer.smp - 1), *timer.command]
    assert timer.argv(1234) == timer.argv(), "the timer has no port"
    assert timer.argv(vcpus=4) == ["taskset", "-c", "3", *timer.command]
    assert timer.argv(vcpus=2)[:3] == ["taskset", "-c", "1"]
    assert timer.argv(vcpus=1) == list(timer.command), "one vCPU: nothing to pin"
    assert "taskset" not in timer.command, "the declaration itself is untouched"


def test_argv_substitutes_inside_arguments_and_every_occurrence() -> None:
    w = Workload("x", ("client", "--url=http://10.0.2.2:{port}/", "{port}"), ops=1, description="x")
    assert w.argv(8080) == ["client", "--url=http://10.0.2.2:8080/", "8080"]
    assert w.argv(0) == ["client", "--url=http://10.0.2.2:0/", "0"]
