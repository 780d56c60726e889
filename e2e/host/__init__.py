"""
This machine: what its kernel, CPU and tracefs offer (:mod:`.hostfacts`), the
capability checks (:mod:`.capability`), ``pveoi doctor`` (:mod:`.doctor`), and
how loaded it is while a run measures (:mod:`.conditions`).

May import: :mod:`e2e.errors`, :mod:`e2e.util`, :mod:`e2e.model`, :mod:`e2e.build`.
"""
