"""SIGKILL mid-write and a full disk, injected for real into every stage's child process."""

from __future__ import annotations

import pytest

from pipeline.artifacts.manifest import Manifest
from pipeline.reliability import faults
from pipeline.reliability.suite import QUICK

pytestmark = pytest.mark.slow

KILLS = [(stage, point) for stage, points in QUICK.kill_points.items() for point in points]


@pytest.fixture
def fresh(built_root, tmp_path) -> faults.Project:
    return faults.copy_project(built_root, tmp_path / "project", "simple_nn")


@pytest.mark.parametrize("stage, point", KILLS, ids=[f"{s}-{p}" for s, p in KILLS])
def test_sigkill_mid_write_leaves_previous_or_nothing_and_next_run_completes(fresh, stage, point):
    before = Manifest(fresh.root, "simple_nn").records[faults.STAGE_ARTIFACT[stage]].sha256
    case = faults.kill_stage(fresh, stage, point=point)
    assert case.killed, case
    assert case.problems == (), case.problems
    # Before the rename the old file is untouched; after it a complete new one is in place
    # (the same bytes again where the stage is deterministic).
    assert case.artifact in ("previous", "new")
    if point in ("temp-created", "torn-temp", "before-rename"):
        assert case.artifact == "previous"
    if point != "after-rename":
        assert case.leftovers >= 1  # the killed writer's temporary file was there to be cleaned
    if stage == "package":
        assert case.leftovers == (1 if point == "after-rename" else 2)  # + the archiver's staging folder
    assert case.recovered
    assert faults.temporaries(fresh) == []
    manifest = Manifest(fresh.root, "simple_nn")
    for key in manifest.records:
        manifest.verified(key, "test")
    if case.artifact == "previous":
        assert manifest.records[faults.STAGE_ARTIFACT[stage]].sha256 == before


def test_timed_kill_halfway_through_training(fresh, built_root):
    # simple_nn trains 3000 epochs (seconds) and writes its checkpoint only at the end: halfway
    # through, the kill lands in the training loop, with a margin of half the training.
    seconds = Manifest(built_root, "simple_nn").records["checkpoint"].seconds
    assert seconds > 1, f"training took {seconds} s: too short for a timed kill to land halfway"
    case = faults.kill_stage(fresh, "train", delay_s=seconds / 2)
    assert case.killed, f"training finished before the kill {case.point} landed"
    assert case.survived, case.problems
    assert case.artifact == "previous"  # killed before the write: the previous checkpoint stands


DISK = [("train", "fresh"), ("trace", "fresh"), ("export", "fresh"), ("package", "fresh"), ("package", "replace")]


@pytest.mark.parametrize("stage, mode", DISK)
def test_disk_full_is_a_clear_error_and_leaves_no_partial_file(fresh, stage, mode):
    case = faults.disk_full(fresh, stage, mode)
    assert case.exit_code == 1, case.message
    assert "could not write" in case.message and "what to do" not in case.message
    assert ("File too large" in case.message) or ("file-size limit" in case.message)
    assert case.artifact == ("previous" if mode == "replace" else "none")
    assert case.leftovers == 0
    assert case.recovered and case.problems == ()
