"""
This machine, one module per job:

* :mod:`.hostfacts`: what its kernel, CPU and tracefs offer;
* :mod:`.tools`: the never-raising probe command runner, and what perf and QEMU
  say about themselves;
* :mod:`.access`: who may open ``/dev/kvm`` and use the pveoi cache;
* :mod:`.capability`: probing all of it into one :class:`~.capability.HostFacts`;
* :mod:`.checks`: each thing ``pveoi doctor`` checks, pass or fail, with its fix;
* :mod:`.decision`: where PV EOI can be measured (direct, virtual or not);
* :mod:`.doctor`: ``pveoi doctor``'s report: graded checks and the decision;
* :mod:`.conditions`: how loaded it is while a run measures.

May import: :mod:`e2e.errors`, :mod:`e2e.util`, :mod:`e2e.model`, :mod:`e2e.build`.
"""
