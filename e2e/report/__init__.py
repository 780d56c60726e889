"""
Writing what was concluded: result files and their history (:mod:`.results`),
text, Markdown and HTML (:mod:`.render`), KTAP (:mod:`.ktap`) and KCIDB
(:mod:`.kcidb`).

May import: every package above it (:mod:`e2e.errors` to :mod:`e2e.analysis`).
"""
