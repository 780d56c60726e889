"""
The typed data every layer passes: the plan of an A/B (:mod:`.plan`), what it
measured and concluded (:mod:`.result`), and the declared workloads
(:mod:`.workloads`). Frozen dataclasses with one JSON writer and reader each.

May import: :mod:`e2e.errors`.
"""
