"""git provenance: the dirty flag is recorded even when the commit comes from the environment, and a short
hash is expanded to the full one where the local git knows it."""

import subprocess

import pytest

from dsa.provenance import REPO_ROOT, git_commit


def _git(*args):
    r = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
    if r.returncode:
        pytest.skip("no git checkout here")
    return r.stdout.strip()


def test_env_commit_at_local_head_gets_the_local_dirty_flag(monkeypatch):
    head = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    monkeypatch.setenv("DSA_GIT_COMMIT", head)
    monkeypatch.delenv("DSA_GIT_DIRTY", raising=False)
    assert git_commit() == {"commit": head, "dirty": dirty}
    monkeypatch.setenv("DSA_GIT_DIRTY", "1")
    assert git_commit()["dirty"] is True


def test_short_env_hash_is_expanded(monkeypatch):
    head = _git("rev-parse", "HEAD")
    monkeypatch.setenv("DSA_GIT_COMMIT", head[:7])
    monkeypatch.setenv("DSA_GIT_DIRTY", "0")
    assert git_commit() == {"commit": head, "dirty": False}


def test_unknown_env_commit_keeps_its_text_and_an_unknown_flag(monkeypatch):
    monkeypatch.setenv("DSA_GIT_COMMIT", "0" * 40)
    monkeypatch.delenv("DSA_GIT_DIRTY", raising=False)
    assert git_commit() == {"commit": "0" * 40, "dirty": None}
