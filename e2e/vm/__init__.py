"""
Machines: the QEMU command line (:mod:`.argv`), one QEMU with QMP and its
console (:mod:`.machine`, :mod:`.console`), SSH into the guest (:mod:`.ssh`),
why a machine ended (:mod:`.ending`) and where KVM saw its CPU shut down
(:mod:`.shutdowns`), and the virtual KVM host, a TCG L1
that runs real KVM (:mod:`.vhost`) and the trials of it (:mod:`.trials`).

May import: :mod:`e2e.errors`, :mod:`e2e.util`, :mod:`e2e.model`,
:mod:`e2e.build`, :mod:`e2e.host`.
"""
