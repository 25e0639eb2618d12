"""Never serve or benchmark an archive older than what it was built from (a model file edited
after `make export`, or a stage re-run without the ones after it): refused, naming what changed."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from pipeline import cli
from pipeline.artifacts.manifest import Manifest
from pipeline.bench import latency as bench
from pipeline.errors import PipelineError
from pipeline.models import load_spec
from pipeline.settings import Layout
from pipeline.stages import train
from pipeline.stages.fresh import stale
from tests.helpers import REPO


@pytest.fixture
def built_file(project, tmp_path):
    """simple_nn's model file copied out of the package, beside a private copy of the session's simple_nn
    project (every stage there is up to date for the same model as a file), free to edit."""
    settings, _ = project
    path = shutil.copyfile(REPO / "pipeline" / "models" / "simple_nn.py", tmp_path / "my_nn.py")
    return dataclasses.replace(settings, model=str(path)), path


def test_a_current_chain_is_not_stale(built_file):
    settings, _ = built_file
    spec = load_spec(settings.model)
    assert stale(spec, Manifest(settings.root.resolve(), spec.name), "mar") is None


def test_an_edited_model_file_is_refused_before_any_server_starts(built_file, capsys):
    settings, path = built_file
    path.write_text(path.read_text() + "\nEDITED_AFTER_EXPORT = 1\n")  # code, not a comment: the hash ignores comments
    code = cli.main(["serve", "--model", str(path), "--root", str(settings.root), "--ports", "auto"])
    err = capsys.readouterr().err
    assert code == 1 and "model_store/simple_nn.mar is older than what it was built from" in err
    assert f"{path} changed after the checkpoint was made from it" in err and "make serve MODEL=... does both" in err
    assert not (Layout(settings.root.resolve(), "simple_nn").root / "run" / "simple_nn" / "server.json").exists()
    spec = load_spec(str(path))
    with pytest.raises(PipelineError, match="older than what they were built from"):
        bench.check(bench.BenchSettings(model=str(path), root=settings.root), spec, Manifest(settings.root.resolve(), spec.name))


def test_a_stage_rerun_alone_leaves_the_archive_stale(built_file):
    settings, _ = built_file
    train.run(dataclasses.replace(settings, seed=3))  # a new checkpoint; trace ... package not re-run
    spec = load_spec(settings.model)
    reason = stale(spec, Manifest(settings.root.resolve(), spec.name), "mar")
    assert reason is not None and "was made from an older checkpoint" in reason
