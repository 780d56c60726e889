"""
pveoi: end-to-end tests for KVM's paravirtual End-Of-Interrupt (PV EOI).

The package is layered; a subpackage imports only those above it in this list
(``tests/unit/test_imports.py`` holds the rule):

* :mod:`e2e.errors` and :mod:`e2e.util`: the error types; running commands and
  children, temp dirs, progress;
* :mod:`e2e.model`: the typed plan, result and workloads every layer passes;
* :mod:`e2e.build`: kernels, the guest image, the cache they live in;
* :mod:`e2e.host`: this machine's facts, capabilities, ``pveoi doctor``, load;
* :mod:`e2e.vm`: QEMU machines, console, SSH, exit causes, the virtual KVM host,
  and the one path to a booted, proven guest;
* :mod:`e2e.measure`: perf, ``kvm:*`` traces, exit reasons, the guest's counters;
* :mod:`e2e.analysis`: statistics, comparing arms, histories, regression checks;
* :mod:`e2e.report`: result files, text/Markdown/HTML, KTAP, KCIDB;
* :mod:`e2e.run`: executing a plan (A/B), the inner runner, bisect;
* :mod:`e2e.cli` and :mod:`e2e.pytest_plugin`: the front ends.
"""

__version__ = "0.1.0"
