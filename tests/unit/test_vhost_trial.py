"""Trials of the virtual host itself (issue 24: what lowers nested TCG's crash rate): L1's ``-cpu`` model and
extra L1 kernel parameters from the environment, checked before anything boots, on L1's command lines, and
recorded in the result."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2e.errors import ConfigError
from e2e.run import runner
from e2e.vm.trials import (
    TRIAL_APPEND,
    TRIAL_CPU,
    TRIAL_HOST_CPUS,
    TRIAL_TB_SIZE,
    TRIAL_TCG,
    Trial,
    trial_host_cpus,
    trial_settings,
    trial_tb_size,
    trial_tcg,
)
from e2e.vm.vhost import VhostSpec, vhost_argv


@pytest.fixture(autouse=True)
def _no_trial_in_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial variable exported where pytest runs is not these tests' trial."""
    for name in [n for n in os.environ if n.startswith("PVEOI_VHOST_")]:
        monkeypatch.delenv(name)


def test_without_a_trial_l1_is_pveois_own() -> None:
    assert trial_settings({}) == ("max", ())
    assert trial_tcg({}) == "multi"
    argv = vhost_argv(VhostSpec(Path("/k/bzImage")), Path("/r"), 3, 4, 5)
    assert argv[argv.index("-cpu") + 1] == "max"
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"


def test_one_reader_gives_every_setting_and_knows_pveois_own() -> None:
    assert Trial.from_environ({}) == Trial() and not Trial.from_environ({}).active
    mine = min(os.sched_getaffinity(0))
    trial = Trial.from_environ({TRIAL_CPU: "EPYC", TRIAL_APPEND: "nokaslr", TRIAL_TCG: "single",
                                TRIAL_HOST_CPUS: str(mine)})
    assert trial == Trial(cpu="EPYC", append=("nokaslr",), tcg_thread="single", host_cpus=(mine,)) and trial.active
    assert Trial(host_cpus=(mine,)).active
    with pytest.raises(ConfigError, match=TRIAL_TCG):  # any refused value refuses the whole trial
        Trial.from_environ({TRIAL_CPU: "EPYC", TRIAL_TCG: "one"})


def test_a_trials_single_threaded_tcg_reaches_l1s_command_line_and_nothing_else_does() -> None:
    assert trial_tcg({TRIAL_TCG: " single "}) == "single"
    argv = vhost_argv(VhostSpec(Path("/k/bzImage"), tcg_thread="single"), Path("/r"), 3, 4, 5)
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"
    for bad in ("multi,foo=1", "one", "single -S"):
        with pytest.raises(ConfigError) as err:
            trial_tcg({TRIAL_TCG: bad})
        assert "\n" not in str(err.value) and TRIAL_TCG in str(err.value) and err.value.fix


def test_a_trials_cpu_model_and_kernel_parameters_reach_l1s_command_lines() -> None:
    cpu, append = trial_settings({TRIAL_CPU: "EPYC-v4", TRIAL_APPEND: "kvm_amd.npt=0 nokaslr"})
    assert (cpu, append) == ("EPYC-v4", ("kvm_amd.npt=0", "nokaslr"))
    argv = vhost_argv(VhostSpec(Path("/k/bzImage"), cpu=cpu, append=append), Path("/r"), 3, 4, 5)
    assert argv[argv.index("-cpu") + 1] == "EPYC-v4"
    kernel_line = argv[argv.index("-append") + 1].split()
    assert "kvm_amd.npt=0" in kernel_line and kernel_line.index("nokaslr") < kernel_line.index("--")


@pytest.mark.parametrize("env", [{TRIAL_CPU: "max -device foo"}, {TRIAL_CPU: "-x"},
                                 {TRIAL_APPEND: "init=/bin/evil"}, {TRIAL_APPEND: "a=\"b c\""},
                                 {TRIAL_APPEND: "--"}])
def test_what_could_reach_a_command_line_unchecked_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as err:
        trial_settings(env)
    assert "\n" not in str(err.value) and err.value.fix


def test_the_result_records_a_trial_and_says_nothing_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRIAL_CPU, raising=False)
    monkeypatch.delenv(TRIAL_APPEND, raising=False)
    monkeypatch.delenv(TRIAL_TCG, raising=False)
    monkeypatch.delenv(TRIAL_HOST_CPUS, raising=False)
    assert runner.trial_record() == {}
    monkeypatch.setenv(TRIAL_APPEND, "kvm_amd.npt=0")
    assert runner.trial_record() == {"trial": {"cpu": "max", "append": ["kvm_amd.npt=0"]}}
    monkeypatch.delenv(TRIAL_APPEND)
    monkeypatch.setenv(TRIAL_TCG, "single")
    assert runner.trial_record() == {"trial": {"cpu": "max", "append": [], "tcg_thread": "single"}}


def test_pveoi_ab_refuses_a_bad_trial_before_anything_boots(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from e2e.cli import main

    monkeypatch.setenv(TRIAL_CPU, "max,+svm -S")
    assert main(["ab", "--host", "virtual"]) == 2
    err = capsys.readouterr().err
    assert f"{TRIAL_CPU}=" in err and "Traceback" not in err
    monkeypatch.delenv(TRIAL_CPU)
    monkeypatch.setenv(TRIAL_TCG, "both")
    assert main(["ab", "--host", "virtual"]) == 2
    err = capsys.readouterr().err
    assert f"{TRIAL_TCG}=" in err and "Traceback" not in err
    monkeypatch.delenv(TRIAL_TCG)
    monkeypatch.setenv(TRIAL_TB_SIZE, "\u00b2")  # a digit to str.isdigit, no number to int()
    assert main(["ab", "--host", "virtual"]) == 2
    err = capsys.readouterr().err
    assert f"{TRIAL_TB_SIZE}=" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_trials_own_kernel_is_checked_and_counts_as_the_virtual_hosts(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    from e2e.vm import trials

    assert trials.trial_kernel({}) is None
    with pytest.raises(ConfigError, match=trials.TRIAL_KERNEL):
        trials.trial_kernel({trials.TRIAL_KERNEL: str(tmp_path / "nothing")})
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"k")
    checked: list[Path] = []
    monkeypatch.setattr(trials, "host_kernel_needs", checked.append)  # the check itself: test_vhost_kernel
    monkeypatch.setenv(trials.TRIAL_KERNEL, str(kernel))
    assert runner.stock_host_kernel() == kernel and checked == [kernel]
    # its crash is the virtual host's own (infrastructure), not a kernel under test's
    assert runner.is_stock_host_kernel(kernel)
    record = runner.trial_record()["trial"]
    assert isinstance(record, dict) and record["kernel"]["kind"] == "path" and record["cpu"] == "max"
    with pytest.raises(ConfigError, match="both pick"):
        runner.stock_host_kernel("6.12")


def test_a_trials_host_cpus_are_this_machines_and_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = sorted(os.sched_getaffinity(0))
    assert trial_host_cpus({}) == ()
    assert trial_host_cpus({TRIAL_HOST_CPUS: f" {mine[0]} "}) == (mine[0],)
    assert trial_host_cpus({TRIAL_HOST_CPUS: ",".join(map(str, reversed(mine)))}) == tuple(mine)
    for bad in (str(max(mine) + 1), "0-1", "a", "0;1", "-1"):
        with pytest.raises(ConfigError) as err:
            trial_host_cpus({TRIAL_HOST_CPUS: bad})
        assert "\n" not in str(err.value) and TRIAL_HOST_CPUS in str(err.value) and err.value.fix
    for name in (TRIAL_CPU, TRIAL_APPEND, TRIAL_TCG):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(TRIAL_HOST_CPUS, str(mine[0]))
    assert runner.trial_record() == {"trial": {"cpu": "max", "append": [], "host_cpus": [mine[0]]}}


def test_a_trials_translation_cache_reaches_l1s_accel_and_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert trial_tb_size({}) is None and trial_tb_size({TRIAL_TB_SIZE: " 64 "}) == 64
    argv = vhost_argv(VhostSpec(Path("/k/bzImage"), tb_size_mb=64), Path("/r"), 3, 4, 5)
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi,tb-size=64"
    for bad in ("8", "64M", "64,thread=single", "-1", "4096", "\u00b2"):
        with pytest.raises(ConfigError) as err:
            trial_tb_size({TRIAL_TB_SIZE: bad})
        assert "\n" not in str(err.value) and TRIAL_TB_SIZE in str(err.value) and err.value.fix
    for name in (TRIAL_CPU, TRIAL_APPEND, TRIAL_TCG, TRIAL_HOST_CPUS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(TRIAL_TB_SIZE, "64")
    assert Trial.from_environ(os.environ) == Trial(tb_size_mb=64)
    assert runner.trial_record() == {"trial": {"cpu": "max", "append": [], "tb_size_mb": 64}}
