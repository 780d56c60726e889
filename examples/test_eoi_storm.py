"""KVM tests written against pveoi's pytest plugin (it comes with `pip install pveoi`).

    pytest examples/                      # the qemu test boots under TCG anywhere
    pytest examples/ --pveoi-kernel ~/src/linux/arch/x86/boot/bzImage --pveoi-smp 4
"""

import pytest

STORM = ["taskset", "-c", "1", "pveoi-load", "timer", "1000", "100"]  # 1000 LAPIC timer interrupts on CPU 1


@pytest.mark.qemu
@pytest.mark.pveoi_guest(smp=2)
def test_a_timer_storm_lands_on_its_cpu(pveoi_guest):
    before = pveoi_guest.interrupts()["LOC"]
    pveoi_guest.run(STORM)
    after = pveoi_guest.interrupts()["LOC"]
    assert after[1] - before[1] >= 1000


@pytest.mark.kvm
@pytest.mark.pveoi_guest(smp=2, pv_eoi=True)
def test_pv_eoi_saves_the_eoi_exit(pveoi_guest):
    with pveoi_guest.count_kvm() as kvm:
        pveoi_guest.run(STORM)
    assert kvm["kvm_pv_eoi"] >= 0.9 * kvm["kvm_inj_virq"]
    assert kvm.per_interrupt("kvm_eoi") - kvm.per_interrupt("kvm_pv_eoi") < 0.1  # trapped EOIs
