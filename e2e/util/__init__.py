"""
Plumbing with no knowledge of KVM: one way to run a host command
(:mod:`.command`), long-lived children reaped whatever happens (:mod:`.spawn`),
private temp dirs (:mod:`.tmpdirs`) named by this host's identity
(:mod:`.hostid`), and progress lines for long steps (:mod:`.progress`).

May import: :mod:`e2e.errors`.
"""
