"""Unit tests for e2e.measure.guest_counters: parsers of the guest's /proc/interrupts and of the
guest patch's /sys/kernel/debug/kvm_pv_eoi, and the deltas between two reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from e2e.measure.guest_counters import (
    PVEOI_DEBUGFS,
    STATE_COMMAND,
    STATE_MARK,
    GuestState,
    PvEoiCpu,
    interrupt_delta,
    parse_proc_interrupts,
    parse_pveoi_debugfs,
    pveoi_delta,
)

REPO = Path(__file__).resolve().parents[2]

# A 2-vCPU q35 guest's /proc/interrupts (Linux 6.1), trailing spaces included.
INTERRUPTS = "           CPU0       CPU1       \n" + """\
  0:         47          0   IO-APIC   2-edge      timer
  1:          0          9   IO-APIC   1-edge      i8042
  4:        310          0   IO-APIC   4-edge      ttyS0
  9:          0          0   IO-APIC   9-fasteoi   acpi
 24:          0          0  PCI-MSIX-0000:00:02.0   0-edge      virtio0-config
 25:        812         17  PCI-MSIX-0000:00:02.0   1-edge      virtio0-input.0
 26:          1        603  PCI-MSIX-0000:00:02.0   2-edge      virtio0-output.0
NMI:          0          0   Non-maskable interrupts
LOC:       3210       2999   Local timer interrupts
SPU:          0          0   Spurious interrupts
RES:        120        130   Rescheduling interrupts
CAL:         40         38   Function call interrupts
TLB:          2          3   TLB shootdowns
ERR:          0
MIS:          0
PIN:          0          0   Posted-interrupt notification event
"""

DEBUGFS = """\
cpu0 feature=1 enabled=1 skipped=4000 written=12
cpu1 feature=1 enabled=1 skipped=3500 written=7
"""


def test_parse_proc_interrupts() -> None:
    rows = parse_proc_interrupts(INTERRUPTS)
    assert rows["0"] == [47, 0]
    assert rows["25"] == [812, 17]
    assert rows["26"] == [1, 603]
    assert rows["LOC"] == [3210, 2999]
    assert rows["RES"] == [120, 130]
    assert rows["CAL"] == [40, 38]
    assert rows["ERR"] == [0, 0], "single-column rows are padded to the CPU count"
    assert rows["MIS"] == [0, 0]
    assert set(rows) == {"0", "1", "4", "9", "24", "25", "26", "NMI", "LOC", "SPU", "RES", "CAL",
                         "TLB", "ERR", "MIS", "PIN"}
    assert all(len(v) == 2 for v in rows.values())


def test_parse_proc_interrupts_ignores_numbers_in_descriptions() -> None:
    text = "           CPU0\n 30:         5   PCI-MSI 512000-edge      nvme0q0 7 8\nLOC:  9  Local\n"
    assert parse_proc_interrupts(text) == {"30": [5], "LOC": [9]}


def test_parse_proc_interrupts_single_cpu_and_empty() -> None:
    text = "           CPU0       \n  0:         12   IO-APIC   2-edge      timer\nLOC:    99   Local\n"
    assert parse_proc_interrupts(text) == {"0": [12], "LOC": [99]}
    assert parse_proc_interrupts("") == {}
    assert parse_proc_interrupts("\n\n") == {}
    assert parse_proc_interrupts("           CPU0       CPU1\n") == {}


def test_parse_proc_interrupts_skips_rows_without_counts() -> None:
    text = "           CPU0       CPU1\nLOC:  1  2  Local\nweird line\nXYZ:  n/a\n"
    assert parse_proc_interrupts(text) == {"LOC": [1, 2]}


def test_parse_pveoi_debugfs() -> None:
    cpus = parse_pveoi_debugfs(DEBUGFS)
    assert cpus == {
        0: PvEoiCpu(0, True, True, 4000, 12),
        1: PvEoiCpu(1, True, True, 3500, 7),
    }


def test_parse_pveoi_debugfs_disabled_and_huge_counts() -> None:
    big = 2**64 - 1  # unsigned long
    cpus = parse_pveoi_debugfs(f"cpu0 feature=1 enabled=0 skipped=0 written={big}\n"
                               "cpu3 feature=0 enabled=0 skipped=0 written=0\n")
    assert cpus is not None
    assert cpus[0] == PvEoiCpu(0, True, False, 0, big)
    assert cpus[3] == PvEoiCpu(3, False, False, 0, 0)
    assert sorted(cpus) == [0, 3], "offline CPUs are simply absent"


@pytest.mark.parametrize("text", ["", "\n", "cat: /sys/kernel/debug/kvm_pv_eoi: No such file\n",
                                  "cpu0 feature=1 enabled=1 skipped=1\n",
                                  "cpu0 feature=1 enabled=1 skipped=-1 written=2\n"])
def test_parse_pveoi_debugfs_absent_or_garbled(text: str) -> None:
    assert parse_pveoi_debugfs(text) is None


def test_parse_pveoi_debugfs_tolerates_whitespace() -> None:
    cpus = parse_pveoi_debugfs("  cpu0  feature=1\tenabled=1 skipped=5 written=6  \r\n")
    assert cpus == {0: PvEoiCpu(0, True, True, 5, 6)}


def test_debugfs_format_matches_the_guest_patch() -> None:
    """The seq_printf format in every base's guest_patches/<base>/0001 renders lines the parser reads."""
    fmts = set()
    for patch in sorted(REPO.glob("guest_patches/*/0001-x86-kvm-count-pv-eoi-skipped-and-written-eois.patch")):
        found = re.search(r'seq_printf\(m, "([^"]*)\\n"', patch.read_text())
        assert found is not None, f"{patch}: the seq_printf format was not found"
        fmts.add(found.group(1))
    assert len(fmts) == 1, f"the bases' series print different lines: {fmts}"
    fmt = re.search("(.*)", fmts.pop())
    assert fmt is not None
    # Python's % takes C's %d, %u and %lu (the length modifier is ignored).
    text = fmt.group(1) % (0, 1, 0, 7, 8) + "\n" + fmt.group(1) % (1, 1, 1, 9, 2**64 - 1) + "\n"
    assert parse_pveoi_debugfs(text) == {0: PvEoiCpu(0, True, False, 7, 8),
                                         1: PvEoiCpu(1, True, True, 9, 2**64 - 1)}


# ---------------------------------------------------------------- GuestState


def test_state_command_reads_both_files_in_one_shell() -> None:
    assert STATE_COMMAND[:2] == ["sh", "-c"]
    script = STATE_COMMAND[2]
    assert "cat /proc/interrupts" in script
    assert f"echo {STATE_MARK}" in script
    assert PVEOI_DEBUGFS in script
    assert script.index("/proc/interrupts") < script.index(STATE_MARK) < script.index(PVEOI_DEBUGFS)


def test_guest_state_parse() -> None:
    state = GuestState.parse(f"{INTERRUPTS}{STATE_MARK}\n{DEBUGFS}")
    assert state.interrupts["LOC"] == [3210, 2999]
    assert state.pveoi is not None and state.pveoi[1].skipped == 3500


def test_guest_state_parse_without_patch() -> None:
    state = GuestState.parse(f"{INTERRUPTS}{STATE_MARK}\n")
    assert state.interrupts["RES"] == [120, 130]
    assert state.pveoi is None
    assert GuestState.parse(INTERRUPTS).pveoi is None


def bump(text: str, row: str, *add: int) -> str:
    """/proc/interrupts with ``row``'s per-CPU counts increased by ``add``."""
    out = []
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if sep and name.strip() == row:
            fields = rest.split()
            for i, extra in enumerate(add):
                fields[i] = str(int(fields[i]) + extra)
            line = f"{name}:{' '.join(fields)}"
        out.append(line)
    return "\n".join(out) + "\n"


def test_interrupt_delta() -> None:
    before = GuestState.parse(INTERRUPTS)
    text = bump(bump(bump(INTERRUPTS, "LOC", 3000, 5), "RES", 0, 2), "ERR", 4)
    after = GuestState.parse(text + "NEW:   6   7   A row that appeared\n")
    delta = interrupt_delta(before, after)
    assert delta["LOC"] == 3005
    assert delta["RES"] == 2
    assert delta["NEW"] == 13
    assert delta["ERR"] == 4
    assert delta["25"] == 0
    assert delta["total"] == 3005 + 2 + 13, "ERR and MIS are not interrupts delivered"


def test_interrupt_delta_no_change() -> None:
    s = GuestState.parse(INTERRUPTS)
    delta = interrupt_delta(s, s)
    assert delta["total"] == 0
    assert set(delta) == set(s.interrupts) | {"total"}


def test_pveoi_delta() -> None:
    before = GuestState.parse(f"{INTERRUPTS}{STATE_MARK}\n{DEBUGFS}")
    after_text = ("cpu0 feature=1 enabled=1 skipped=7000 written=13\n"
                  "cpu1 feature=1 enabled=1 skipped=3510 written=9\n")
    after = GuestState.parse(f"{INTERRUPTS}{STATE_MARK}\n{after_text}")
    assert pveoi_delta(before, after) == {
        "skipped": 3010, "written": 3, "feature": [True, True], "enabled": [True, True],
        "per_cpu": {"0": {"skipped": 3000, "written": 1}, "1": {"skipped": 10, "written": 2}}}


def test_pveoi_delta_flags_are_per_cpu_in_cpu_order() -> None:
    before = GuestState({}, {1: PvEoiCpu(1, True, False, 0, 0), 0: PvEoiCpu(0, True, True, 0, 0)})
    after = GuestState({}, {1: PvEoiCpu(1, True, False, 0, 5), 0: PvEoiCpu(0, True, True, 9, 0)})
    assert pveoi_delta(before, after) == {
        "skipped": 9, "written": 5, "feature": [True, True], "enabled": [True, False],
        "per_cpu": {"0": {"skipped": 9, "written": 0}, "1": {"skipped": 0, "written": 5}}}


def test_pveoi_delta_without_patch() -> None:
    with_patch = GuestState.parse(f"{INTERRUPTS}{STATE_MARK}\n{DEBUGFS}")
    without = GuestState.parse(INTERRUPTS)
    assert pveoi_delta(without, without) is None
    assert pveoi_delta(with_patch, without) is None
    assert pveoi_delta(without, with_patch) is None


def test_interrupt_delta_per_cpu_keeps_each_cpu() -> None:
    from e2e.measure.guest_counters import interrupt_delta_per_cpu

    before = GuestState({"LOC": [10, 20], "RES": [1, 2]}, None)
    after = GuestState({"LOC": [15, 40], "RES": [1, 7]}, None)
    assert interrupt_delta_per_cpu(before, after) == {"LOC": [5, 20], "RES": [0, 5]}
    assert interrupt_delta(before, after) == {"LOC": 25, "RES": 5, "total": 30}
