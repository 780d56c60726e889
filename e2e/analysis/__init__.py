"""
From counts to conclusions: statistics (:mod:`.stats`), rates
(:mod:`.rates`), comparing two arms into a verdict (:mod:`.compare`), histories
of runs (:mod:`.history`), the drop rule (:mod:`.droprule`: detection floor and
one-sided test) and the nightly's regression checks (:mod:`.regress`).
Pure functions of data; nothing here boots or runs a command.

May import: :mod:`e2e.errors`, :mod:`e2e.util`, :mod:`e2e.model`,
:mod:`e2e.build`, :mod:`e2e.host`, :mod:`e2e.vm`, :mod:`e2e.measure`.
"""
