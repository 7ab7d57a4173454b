"""Checkpoints are all-or-nothing, versions only grow, rollback keeps the lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsec.runtime.checkpoints import CheckpointError, CheckpointStore


def model(v: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), v, np.float32), "b": np.array([v], np.float32)}


def test_commit_and_latest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.latest() is None
    for r in range(3):
        store.commit(model(float(r)), {"round": r, "kind": "train"})
    latest = store.latest()
    assert latest is not None and (latest.version, latest.round) == (3, 2)
    np.testing.assert_array_equal(latest.load_model()["w"], model(2.0)["w"])


def test_interrupted_write_leaves_no_version(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.commit(model(1.0), {"round": 1})
    # what a crash between writing and renaming leaves behind
    torn = tmp_path / "checkpoints" / ".tmp-crashed"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    reopened = CheckpointStore(tmp_path)
    assert reopened.versions() == [1] and not torn.exists()


def test_corrupt_model_is_detected(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    cp = store.commit(model(1.0), {"round": 1})
    data = bytearray((cp.path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (cp.path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        store.get(1).load_model()


def test_rollback_makes_an_old_model_current_as_a_new_version(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for r in range(1, 5):
        store.commit(model(float(r)), {"round": r, "kind": "train"})
    cp = store.rollback(2, reason="drift")
    assert cp.version == 5 and cp.round == 2 and cp.meta["rollback_of"] == 4 and cp.meta["restored_version"] == 2
    np.testing.assert_array_equal(store.latest().load_model()["w"], model(2.0)["w"])  # type: ignore[union-attr]
    assert store.versions() == [1, 2, 3, 4, 5]  # nothing rewritten: the old versions stay beside the new
    with pytest.raises(CheckpointError, match="committed rounds"):
        store.rollback(9, reason="typo")


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for r in range(5):
        store.commit(model(float(r)), {"round": r})
    assert store.prune(2) == [1, 2, 3]
    assert store.versions() == [4, 5]
    assert store.prune(0) == []
