"""AOTInductor packages (`.pt2`): what one is tied to, and a session that runs it like ONNX Runtime's.

`torch._inductor.aoti_compile_and_package` compiles kernels for one device kind and, on the CPU,
for the vector instruction set inductor picked on the machine that built it (AVX-512, AVX2). A
package built on one machine can crash or run the wrong code elsewhere, so the stage records
what it is tied to (`tied_to`), and every load checks that record against the machine first
(`check_tied`): a package is refused, with the command that rebuilds it, never loaded blind.

`Pt2Session` has the two calls of an ONNX Runtime session that the servers and parity use
(`run(output_names, feed)` and `get_providers()`), so the one serving path serves either.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.artifacts.manifest import ArtifactRecord, Manifest
from pipeline.artifacts.names import pt2_key
from pipeline.errors import PipelineError


def devices() -> list[str]:
    """The devices packages are compiled and checked for: the CPU always (servers' CPU workers), CUDA where this machine has it."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def packages(manifest: Manifest) -> dict[str, ArtifactRecord]:
    """The packages the pt2 stage made for this machine's devices, by device (a not-made record is left out)."""
    found = {device: manifest.records.get(pt2_key(device)) for device in devices()}
    return {device: rec for device, rec in found.items() if rec is not None and not rec.not_made}


def verified_package(manifest: Manifest, device: str, stage: str) -> Path:
    """The package for `device`, its hash checked against the manifest and its record against this machine."""
    path, rec = manifest.verified(pt2_key(device), stage)
    rebuild = f"python -m pipeline pt2 --model {manifest.command} --force"
    check_tied(rec.details.get("tied_to", {}), device, path.name, rebuild, stage)
    return path


@cache
def compiler() -> str:
    """The C++ compiler inductor calls (g++ unless CXX says otherwise), by its own first line of --version."""
    from torch._inductor import cpp_builder

    cxx = cpp_builder.get_cpp_compiler()
    if shutil.which(cxx) is None:
        return f"{cxx} (not found)"
    done = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout.splitlines() or [cxx])[0]


def cpu_isas() -> list[str]:
    """The vector instruction sets inductor finds usable on this CPU, best first ('avx512 avx512_vnni', 'avx2')."""
    from torch._inductor import cpu_vec_isa

    return [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]


def tied_to(device: str) -> dict[str, Any]:
    """What a package compiled here now, for `device`, depends on: recorded beside it, checked at every load."""
    import torch._inductor.config as inductor
    from torch._inductor import cpu_vec_isa

    tied: dict[str, Any] = {
        "device": device,
        "platform": sys.platform,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "cpu_isa": str(cpu_vec_isa.pick_vec_isa()),
        "march": inductor.cpp.march,  # None: inductor's own flags for cpu_isa, not -march=native
        "compiler": compiler(),
    }
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        tied["compute_capability"] = f"{major}.{minor}"
    return tied


def mismatches(recorded: dict[str, Any], device: str) -> list[str]:
    """How this machine differs from the one a package was compiled on, in what matters for loading it."""
    problems = []
    for key in ("platform", "machine", "torch"):
        here = {"platform": sys.platform, "machine": platform.machine(), "torch": torch.__version__}[key]
        if recorded.get(key) != here:
            problems.append(f"{key} {recorded.get(key)} there, {here} here")
    if recorded.get("device") != device:
        problems.append(f"compiled for {recorded.get('device')}, asked to run on {device}")
    isa = recorded.get("cpu_isa")
    if isa and isa not in cpu_isas():
        problems.append(f"compiled for the CPU instruction set '{isa}', which this CPU lacks (it has: {', '.join(cpu_isas()) or 'none'})")
    if recorded.get("march") not in (None, "", platform.machine()) and not problems:
        problems.append(f"compiled with -march={recorded['march']}, tied to the CPU that built it")
    if device == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        if recorded.get("compute_capability") != f"{major}.{minor}":
            problems.append(f"compiled for compute capability {recorded.get('compute_capability')}, this GPU is {major}.{minor}")
    return problems


def check_tied(recorded: dict[str, Any], device: str, what: str, rebuild: str, stage: str) -> None:
    """Refuse to load a package on a machine it was not compiled for; `rebuild` is the command that makes one here."""
    problems = mismatches(recorded, device)
    if problems:
        raise PipelineError(
            stage,
            f"{what} was compiled on another machine or torch and is not loaded here: {'; '.join(problems)}",
            f"compile it on this machine: {rebuild}",
        )


class Pt2Session:
    """An AOTInductor package behind ONNX Runtime's `run` and `get_providers`: numpy in, numpy out."""

    def __init__(self, path: Path, input_names: list[str], device: str = "cpu", threads: int | None = None):
        if device == "cuda" and not torch.cuda.is_available():
            raise PipelineError(
                "runtime", f"{path.name} is compiled for CUDA and this machine has no CUDA device", "run it on a GPU machine"
            )
        if threads is not None:
            torch.set_num_threads(threads)  # the package's OpenMP kernels take torch's intra-op threads
        self.input_names = list(input_names)  # the package takes its inputs by position
        self.device = torch.device(device)
        self.model = torch._inductor.aoti_load_package(str(path))
        self.provider = f"AOTInductor ({device}, torch {torch.__version__})"

    def get_providers(self) -> list[str]:
        return [self.provider]

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            result = self.model(*args)
        values = result if isinstance(result, (tuple, list)) else (result,)
        if len(values) != len(output_names):
            raise PipelineError(
                "runtime",
                f"the package returned {len(values)} outputs, its contract names {len(output_names)}",
                "rebuild the package from the model: python -m pipeline pt2 --force",
            )
        return [v.detach().cpu().numpy() for v in values]
