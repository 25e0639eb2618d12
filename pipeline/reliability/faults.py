"""Pipeline faults injected for real: SIGKILL mid-write, a full disk, damaged artifacts.

Each fault runs a stage in a child process (`python -m pipeline.reliability.faults ...`), kills
or starves it, and then checks what a user would find: the previous good artifact
or none under its final name (never a partial one), a manifest that still vouches
only for what it lists, and a next run that completes. The checks return records;
`pipeline.reliability` reports them and the tests assert on them.

Kill points are chosen in the child by wrapping `files.atomic_path` (the one place
every artifact is written), so the SIGKILL lands at a known moment of the write;
timed kills at fractions of the stage's own duration land wherever they land.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.artifacts import files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import MAR
from pipeline.errors import PipelineError
from pipeline.settings import Layout, Settings

# The artifact each stage writes, by manifest key.
STAGE_ARTIFACT = {"train": "checkpoint", "trace": "torchscript", "export": "onnx", "parity": "parity", "package": "mar"}
# Where in the write of the stage's artifact the child kills itself:
#   temp-created    the temporary file exists, empty
#   torn-temp       the temporary file holds half the bytes (a write cut short)
#   before-rename   the temporary file is complete, the final name untouched
#   after-rename    the new artifact is in place, the manifest not yet updated
#   manifest-write  the manifest's own temporary file is half written
KILL_POINTS = ("temp-created", "torn-temp", "before-rename", "after-rename", "manifest-write")
CHILD_TIMEOUT_S = 300


@dataclass(frozen=True)
class KillCase:
    """One SIGKILL of a stage and what was found after it."""

    stage: str
    point: str  # a KILL_POINTS entry, or "after N ms" for a timed kill
    killed: bool  # False: the stage finished before the kill landed
    artifact: str  # previous | new | none | partial
    leftovers: int  # temporary files left by the killed process (removed by the next run)
    recovered: bool
    seconds: float
    problems: tuple[str, ...] = ()

    @property
    def survived(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class DiskFullCase:
    """One stage run against a file-size limit smaller than its artifact."""

    stage: str
    mode: str  # replace: a previous artifact exists; fresh: none does
    exit_code: int
    message: str
    artifact: str  # previous | none | partial | new
    leftovers: int
    recovered: bool
    problems: tuple[str, ...] = ()

    @property
    def survived(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class DamageCase:
    """One damaged artifact handed to the stage that reads it."""

    artifact: str
    damage: str
    refused: bool
    message: str


@dataclass(frozen=True)
class Project:
    """A private copy of a built project, free to damage."""

    root: Path
    model: str

    @property
    def settings(self) -> Settings:
        return Settings(model=self.model, root=self.root)

    @property
    def layout(self) -> Layout:
        return Layout(self.root.resolve(), self.model)

    def manifest(self) -> Manifest:
        return Manifest(self.root, self.model)


def copy_project(built: Path, dest: Path, model: str) -> Project:
    """Copy the artifacts, reports and archive of `built` (not its run/ folder) to `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in ("artifacts", "reports", "model_store"):
        if (built / part).exists():
            shutil.copytree(built / part, dest / part, symlinks=True)
    return Project(dest, model)


def artifact_path(project: Project, key: str) -> Path:
    return project.root / project.manifest().records[key].path


def temporaries(project: Project) -> list[Path]:
    """Writers' temporary files and folders anywhere in the project's artifact folders."""
    layout = project.layout
    folders = (layout.artifacts, layout.reports, layout.model_store)
    return [p for folder in folders if folder.is_dir() for p in folder.iterdir() if files.TEMP_NAME.match(p.name)]


def is_whole(key: str, path: Path) -> bool:
    """Whether `path` is a complete, loadable artifact of kind `key` (hash aside)."""
    import json

    try:
        if key == "checkpoint":
            from safetensors.torch import load_file

            from pipeline.artifacts.checkpoint import check_header

            check_header(path, "check")
            load_file(str(path))
        elif key == "torchscript":
            import torch

            torch.jit.load(str(path))
        elif key == "onnx":
            import onnx

            from pipeline.artifacts.safety import check_onnx_file

            check_onnx_file(path)
            onnx.checker.check_model(str(path))
        elif key == "parity":
            json.loads(path.read_text())
        elif key == "mar":
            from pipeline.artifacts.archive import inspect_archive

            inspect_archive(path)
        else:
            raise ValueError(f"unknown artifact kind {key}")
    except ValueError:
        raise
    except Exception:  # any parser's complaint means "not whole"
        return False
    return True


def _artifact_state(project: Project, key: str, old_sha: str | None) -> str:
    path = artifact_path(project, key)
    if not path.exists():
        return "none"
    if old_sha is not None and files.sha256_file(path) == old_sha:
        return "previous"
    return "new" if is_whole(key, path) else "partial"


def _manifest_problems(project: Project) -> list[str]:
    """What is wrong with the manifest's promises: every file it vouches for must be whole."""
    try:
        manifest = project.manifest()
    except PipelineError as exc:
        return [f"manifest unreadable: {exc.problem}"]
    problems = []
    for key, rec in manifest.records.items():
        path = project.root / rec.path
        if path.exists() and files.sha256_file(path) != rec.sha256 and not is_whole(key, path):
            problems.append(f"{rec.path} is partial (neither the recorded file nor a complete new one)")
    return problems


def recover(project: Project) -> list[str]:
    """Run every stage as `make export` would (no --force); problems found, if any."""
    from pipeline.stages import run_all

    try:
        run_all(project.settings)
    except PipelineError as exc:
        return [f"the next run failed: {exc.problem}"]
    problems = []
    manifest = project.manifest()
    for key in manifest.records:
        try:
            manifest.verified(key, "check")
        except PipelineError as exc:
            problems.append(f"after the next run: {exc.problem}")
    left = temporaries(project)
    if left:
        problems.append(f"after the next run, temporary files remain: {[p.name for p in left]}")
    return problems


def _child(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.reliability.faults", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_stage(project: Project, stage: str, point: str | None = None, delay_s: float | None = None) -> KillCase:
    """SIGKILL `stage` (run with --force) at `point` or `delay_s` after it starts; check and recover."""
    key = STAGE_ARTIFACT[stage]
    old_sha = project.manifest().records[key].sha256
    start = time.monotonic()
    proc = _child(["kill", str(project.root), project.model, stage, point or "none"])
    if delay_s is not None:
        assert proc.stdout is not None  # _child opens it as a pipe
        proc.stdout.readline()  # "READY": imports done, the stage starts now
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    killed = proc.returncode == -signal.SIGKILL
    problems = []
    if not killed and proc.returncode != 0:
        problems.append(f"the stage exited with {proc.returncode} instead of being killed: {err.strip()[-300:]}")
    if point is not None and not killed:
        problems.append(f"the kill point {point} was never reached")
    state = _artifact_state(project, key, old_sha)
    if state == "partial":
        problems.append(f"a partial {key} lies under its final name")
    problems += _manifest_problems(project)
    leftovers = len(temporaries(project))
    recovery = recover(project)
    if point:
        where = point
    else:
        assert delay_s is not None  # callers give point or delay_s
        where = f"after {delay_s * 1000:.0f} ms"
    return KillCase(
        stage,
        where,
        killed,
        state,
        leftovers,
        not recovery,
        round(time.monotonic() - start, 2),
        tuple(problems + recovery),
    )


def disk_full(project: Project, stage: str, mode: str = "replace") -> DiskFullCase:
    """Run `stage` with a file-size limit of half its artifact; expect a clear error and no partial file.

    mode "replace": the previous artifact is in place (refused before writing, it must stay);
    mode "fresh": the artifact was removed first, so the write itself hits the limit.
    """
    key = STAGE_ARTIFACT[stage]
    path = artifact_path(project, key)
    old_sha = files.sha256_file(path)
    limit = path.stat().st_size // 2
    if mode == "fresh":
        path.unlink()
    proc = _child(["disk", str(project.root), project.model, stage, str(limit)])
    _, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    message = next((line.removeprefix("error: ") for line in err.splitlines() if line.startswith("error: ")), err.strip()[-300:])
    problems = []
    if proc.returncode != 1:
        problems.append(f"exit code {proc.returncode}, expected 1 with an error message")
    if "could not write" not in message or path.name not in message:
        problems.append(f"the error does not say which file could not be written: {message!r}")
    state = _artifact_state(project, key, old_sha)
    if state != {"replace": "previous", "fresh": "none"}[mode]:
        problems.append(f"artifact afterwards: {state}")
    leftovers = len(temporaries(project))
    if leftovers:
        problems.append(f"{leftovers} temporary file(s) left behind")
    problems += _manifest_problems(project)
    recovery = recover(project)
    return DiskFullCase(stage, mode, proc.returncode, message, state, leftovers, not recovery, tuple(problems + recovery))


# --- damage: every byte of every artifact is covered by its hash -------------------------


def _consumers(project: Project) -> dict:
    """For each artifact, the stage (or server start-up) that reads it next."""
    from pipeline.stages import package, parity, trace

    def serve_reads_mar(settings):
        # What serve.start does first, before java or TorchServe are involved.
        project.manifest().verified(MAR, "serve")

    return {"checkpoint": trace.run, "torchscript": parity.run, "onnx": package.run, "parity": package.run, "mar": serve_reads_mar}


def damage_case(project: Project, key: str, offset: int | None = None, xor: int = 0xFF, truncate_to: int | None = None) -> DamageCase:
    """Flip one byte (or truncate) artifact `key`, hand it to its reader, restore it."""
    path = artifact_path(project, key)
    original = path.read_bytes()
    if truncate_to is not None:
        damaged, what = original[:truncate_to], f"truncated to {truncate_to} of {len(original)} bytes"
    else:
        assert offset is not None  # callers give offset or truncate_to
        data = bytearray(original)
        data[offset] ^= xor
        damaged, what = bytes(data), f"byte {offset} of {len(original)} xor 0x{xor:02x}"
    path.write_bytes(damaged)
    try:
        _consumers(project)[key](project.settings)
    except PipelineError as exc:
        refused = "does not match the manifest" in exc.problem and "refusing to load it" in exc.problem
        return DamageCase(key, what, refused, exc.problem)
    finally:
        path.write_bytes(original)
    return DamageCase(key, what, False, "accepted")


def damage_sweep(project: Project, per_artifact: int, seed: int = 0) -> list[DamageCase]:
    """Random single-byte changes and truncations of every artifact, `per_artifact` of each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cases = []
    for key in STAGE_ARTIFACT.values():
        size = artifact_path(project, key).stat().st_size
        for _ in range(per_artifact):
            cases.append(damage_case(project, key, offset=int(rng.integers(size)), xor=int(rng.integers(1, 256))))
            cases.append(damage_case(project, key, truncate_to=int(rng.integers(size))))
    return cases


# --- the child side -------------------------------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill_point(target: str, point: str) -> None:
    """Wrap files.atomic_path so the write of `target` ends in SIGKILL at `point`."""
    original = files.atomic_path
    state = {"artifact_written": False}

    @contextlib.contextmanager
    def killing(path, at_least=0):
        name = Path(path).name
        mine = name == target and not state["artifact_written"]
        manifest_after = point == "manifest-write" and name == "manifest.json" and state["artifact_written"]
        with original(path, at_least) as tmp:
            if mine and point == "temp-created":
                _die()
            yield tmp
            if (mine and point == "torn-temp") or manifest_after:
                os.truncate(tmp, tmp.stat().st_size // 2)
                _die()
            if mine and point == "before-rename":
                _die()
        if mine:
            state["artifact_written"] = True
            if point == "after-rename":
                _die()

    files.atomic_path = killing


def _child_main(argv: list[str]) -> int:
    from pipeline.settings import resolve
    from pipeline.stages import STAGES

    command, root, model, stage = argv[:4]
    settings = Settings(model=model, root=Path(root), force=True)
    if command == "kill":
        point = argv[4]
        if point != "none":
            _, layout = resolve(settings)
            target = {
                "checkpoint": layout.checkpoint,
                "torchscript": layout.torchscript,
                "onnx": layout.onnx,
                "parity": layout.reports / "parity.json",
                "mar": layout.mar,
            }[STAGE_ARTIFACT[stage]]
            _install_kill_point(target.name, point)
        print("READY", flush=True)
        STAGES[stage](settings)
        return 0
    if command == "disk":
        import resource

        # Without this the kernel's SIGXFSZ kills the process instead of write() failing with EFBIG.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(argv[4])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        # The command a user runs, in this process: exec keeps the file size limit and the ignored SIGXFSZ.
        os.execv(sys.executable, [sys.executable, "-m", "pipeline", stage, "--root", root, "--model", model, "--force"])
    raise SystemExit(f"unknown command {command}")


def as_dict(case) -> dict:
    return {**asdict(case), "survived": case.survived} if hasattr(case, "survived") else asdict(case)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
