"""
Executing a plan: the A/B itself (:mod:`.ab`), the evidence a failed attempt
keeps (:mod:`.evidence`), where KVM work runs (:mod:`.hostsel`, :mod:`.runner`),
the runner inside the virtual host (:mod:`.inner`) and ``pveoi bisect``
(:mod:`.bisect`).

May import: every package above it (:mod:`e2e.errors` to :mod:`e2e.report`).
"""
