"""Session builds made beside the tests, at the lowest CPU priority, for the fixtures that need them later.

Each build shares no file with the tests, and a server it starts (on a free port) stops before it ends. When the run
begins, one process starts making the builds its tests need, one after another in the order they are needed; it takes
the cores the tests leave idle (servers starting, clients waiting, sleeps) and gives them back at once to a test that
wants them. A fixture waits for its build's mark of being done. A build asked for that was not foreseen starts then,
on its own.

    python -m tests.background ROOT NAME...    # each build into ROOT/<its folder>, as the run starts them
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import psutil

from pipeline.settings import Settings
from pipeline.stages import run_all
from tests.helpers import REPO

# fixture name -> "module:function" that builds into the folder it is given, in the order the tests need them.
BUILDS = {
    "chains": "tests.background:build_builtin_chains",
    "text_image_root": "tests.serving.real_models:build",
    "genbench_llama": "tests.bench.test_generation_bench:build_genbench_llama",
    "small_llama": "tests.generation.checkpoints:build_small_llama",
    "cache_decoders": "tests.generation.checkpoints:build_cache_decoders",
    "hf_chains": "tests.test_hf_checkpoint:build_chains",
    "library_decoders": "tests.stages.test_decoders:build_library_decoders",
    "tiny_chains": "tests.test_real_models:build_tiny_chains",
    "retrained": "tests.serving.test_update:build_retrained",
    "swin_chain": "tests.stages.test_exporter_fallback:build_swin",
    "named_chains": "tests.stages.test_named_outputs:build_named_chains",
    "gpu_rehearsal": "tests.test_gpu_image:rehearse",
    "embedder_chain": "tests.test_hf_checkpoint:build_embedder_chain",
    "readme_chain": "tests.test_readme_model:build_readme_chain",
    "resnet_suite": "tests.test_real_models:run_resnet_suite",
    "generation_suite": "tests.test_real_models:run_generation_suite",
    "installed_wheel": "tests.test_wheel:install",
    "zoo": "tests.zoo.matrix:write",
}
# Short folder names: TorchServe's sockets live under some of them.
FOLDER = {
    "chains": "builtin",
    "text_image_root": "ti",
    "genbench_llama": "genbench",
    "small_llama": "gen",
    "cache_decoders": "cache",
    "hf_chains": "hf",
    "library_decoders": "dec",
    "tiny_chains": "tiny",
    "retrained": "v2",
    "swin_chain": "swin",
    "named_chains": "named",
    "gpu_rehearsal": "gpu",
    "embedder_chain": "xlmr",
    "readme_chain": "readme",
    "resnet_suite": "resnet",
    "generation_suite": "gensuite",
    "installed_wheel": "wheel",
    "zoo": "zoo",
}


# The built-in models that tests ask `chains` for (tests/conftest.py).
BUILTIN_CHAINS = ("digits_cnn", "store_demand", "seq_encoder")


def chain_settings(model: str, root: Path) -> Settings:
    # The package is compiled for simple_nn (built_root) and the zoo; here it would only add compile time.
    return Settings(model=model, root=root, pt2=False)


def build_builtin_chains(folder: Path) -> None:
    """Each of BUILTIN_CHAINS through every stage in folder/<model>."""
    for model in BUILTIN_CHAINS:
        run_all(chain_settings(model, folder / model))


def keep(folder: Path, done: subprocess.CompletedProcess) -> None:
    """A command's result, kept in `folder` for the test that checks it (`kept`)."""
    result = {"args": [str(a) for a in done.args], "returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
    (folder / "result.json").write_text(json.dumps(result))


def kept(folder: Path) -> subprocess.CompletedProcess:
    """The command's result that `keep` kept in `folder`."""
    result = json.loads((folder / "result.json").read_text())
    return subprocess.CompletedProcess(result["args"], result["returncode"], result["stdout"], result["stderr"])


def lowest_priority(pid: int) -> None:
    """The lowest CPU and disk priority for `pid` and the processes it starts. Where the kernel shares the CPU between
    sessions first (autogroup, on by default in many Linux kernels), a process's nice value counts only
    within its session: a build in a session of its own at nice 19 had as large a share as the tests. The session's own
    nice value is set too."""
    proc = psutil.Process(pid)
    proc.nice(19)
    proc.ionice(psutil.IOPRIO_CLASS_IDLE)
    try:
        Path(f"/proc/{pid}/autogroup").write_text("19")
    except OSError:  # no autogroup on this kernel: nice is the priority
        pass


class Builds:
    """The run's builds under one root: those the collected tests need, started at once in one niced process."""

    def __init__(self, root: Path, names: list[str]):
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.started = time.time()
        self.waited: dict[str, float] = {}  # seconds the tests spent waiting for each build
        self._stopping = threading.Event()
        threading.Thread(target=self._keep_low, daemon=True).start()  # for a build started later (folder) too
        if names:
            self._start(names)

    def _start(self, names: list[str]) -> None:
        with open(self.root / f"{names[0]}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.background", str(self.root), *names],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Set before its imports are done: the processes it starts inherit it, but for the sessions of their own that
        # servers start (_keep_low).
        lowest_priority(proc.pid)
        self.procs |= dict.fromkeys(names, proc)

    def _keep_low(self) -> None:
        """Every second, the lowest priority for each process a build started in a session of its own (a server)."""
        done: set[int] = set()
        while not self._stopping.wait(1.0):
            for proc in list(set(self.procs.values())):
                try:
                    for child in psutil.Process(proc.pid).children(recursive=True):
                        if (sid := os.getsid(child.pid)) != proc.pid and sid not in done:
                            lowest_priority(child.pid)  # and so its session's
                            done.add(sid)
                except (psutil.Error, ProcessLookupError):  # ended while looked at
                    continue

    def folder(self, name: str, timeout: float = 1800) -> Path:
        """The folder `name` was built into, once it is done."""
        if name not in self.procs:
            self._start([name])
        proc, asked = self.procs[name], time.monotonic()
        deadline = asked + timeout
        while not (self.root / f"{name}.done").exists():
            failed = self.root / f"{name}.failed"
            assert not failed.exists(), f"building {name} failed:\n{failed.read_text()}"
            assert proc.poll() is None or (self.root / f"{name}.done").exists(), (
                f"the build of {name} exited with {proc.returncode}: {self._logs()}"
            )
            assert time.monotonic() < deadline, f"building {name} took over {timeout:.0f} s: {self._logs()}"
            time.sleep(0.2)
        self.waited[name] = self.waited.get(name, 0.0) + time.monotonic() - asked
        return self.root / FOLDER[name]

    def summary(self) -> list[str]:
        """When each build was done, from the run's start, and how long the tests waited for it."""
        lines = []
        for name in self.procs:
            done = self.root / f"{name}.done"
            at = f"done at {done.stat().st_mtime - self.started:5.0f} s" if done.exists() else "not done"
            lines.append(f"{name:18} {at}, waited for {self.waited.get(name, 0.0):5.1f} s")
        return lines

    def _logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        self._stopping.set()
        for proc in set(self.procs.values()):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def main(argv: list[str]) -> int:
    root, names = Path(argv[0]), argv[1:]
    for name in names:
        module, function = BUILDS[name].split(":")
        folder = root / FOLDER[name]
        folder.mkdir()
        try:
            getattr(importlib.import_module(module), function)(folder)
        except BaseException:
            (root / f"{name}.failed").write_text(traceback.format_exc())
            return 1
        (root / f"{name}.done").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
