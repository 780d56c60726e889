"""Which host /tmp paths the virtual KVM host binds back in over its own /tmp."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.vm.vhost import paths_to_keep


def test_a_cwd_or_extra_under_tmp_is_kept_but_never_tmp_itself(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.chdir("/tmp")
    keep = paths_to_keep([Path("/tmp"), tmp_path])
    assert "/tmp" not in keep  # L1 would lose its writable /tmp
    assert str(tmp_path.resolve()) in keep
    monkeypatch.chdir(tmp_path)
    assert str(tmp_path.resolve()) in paths_to_keep([])
    assert all(p.startswith("/tmp/") for p in paths_to_keep([Path("/var/lib"), Path("/")]))
