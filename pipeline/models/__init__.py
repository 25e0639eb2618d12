"""Where a model's spec comes from: a built-in module here (each defines `SPEC`), a module on
the Python path, your own .py file, or a Hugging Face checkpoint folder (`hf:PATH`).

`load_spec` is the one way in; every stage of a command calls it (through
`pipeline.settings.resolve`), and a model file or checkpoint folder is read once per
version of it in a process.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import re
import traceback
from pathlib import Path
from types import ModuleType

from pipeline.artifacts.environment import IMPORT_FAILURES, ImportFailure, import_failure
from pipeline.artifacts.files import nearby
from pipeline.errors import SpecError
from pipeline.spec import EXAMPLE, FIELDS, HF_PREFIX, HF_TASKS, REQUIRED, ModelSpec, TensorSpec, validate

# Specs already built in this process: by path and content (a model file), or by folder and its files' state (a checkpoint).
_LOADED: dict[tuple[str, ...], ModelSpec] = {}


def _missing_package(failure: ImportFailure, where: str) -> SpecError:
    install = "pip install 'pipeline[transformers]'" if failure.package == "transformers" else f"pip install {failure.distribution}"
    return SpecError("model", failure.problem(where), failure.fix(install))


def _load_error(exc: Exception, where: str, module: str) -> SpecError:
    """Turn an exception raised while importing a model file into a message with the fix."""
    # A package that cannot load (a torchvision built for another torch breaks `import transformers`)
    # is named, and one a built-in model needs that is missing; a user's file keeps its own line
    # for a missing import (it may be a module of theirs, not a package) and for its own errors.
    failure = import_failure(exc) if isinstance(exc, ImportError) else None
    if failure is not None and failure.package != module.split(".")[0] and (not failure.missing or module.startswith("pipeline.")):
        return _missing_package(failure, where)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == where]
    at = f" (line {frames[-1].lineno}: {frames[-1].line})" if frames else ""
    message = str(exc)
    problem = f"{where} failed to import{at}: {type(exc).__name__}: {message}"
    if isinstance(exc, TypeError) and ("ModelSpec" in message or "TensorSpec" in message):
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", message)
        if unexpected:
            fields = FIELDS if "ModelSpec" in message else [f.name for f in dataclasses.fields(TensorSpec)]
            close = difflib.get_close_matches(unexpected.group(1), fields, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            return SpecError("model", problem, f"{hint}the fields are: {', '.join(fields)}")
        return SpecError(
            "model",
            problem,
            f"ModelSpec needs {', '.join(REQUIRED)}; optional: {', '.join(f for f in FIELDS if f not in REQUIRED)}. For example: {EXAMPLE}",
        )
    return SpecError("model", problem, "fix the error above; the file must import on its own and define SPEC")


def hf_model(model: str, task: str | None) -> str:
    """The --model string with `task` in it: `hf:PATH#task=TASK` (the one way a task travels)."""
    if task is None:
        return model
    if not model.startswith(HF_PREFIX):
        raise SpecError(
            "model", f"--task {task} was given for {model!r}, which is not a checkpoint folder", f"pass --model {HF_PREFIX}PATH"
        )
    return f"{model.partition('#')[0]}#task={task}"


def _hf_spec(model: str) -> ModelSpec:
    folder, _, option = model[len(HF_PREFIX) :].partition("#")
    key, _, task = option.partition("=")
    if option and (key != "task" or task not in HF_TASKS):
        what = f"unknown task {task!r}" if key == "task" else f"unknown option {option!r} after '#'"
        raise SpecError("model", f"{model!r}: {what}", f"write {HF_PREFIX}PATH#task=TASK, TASK one of {', '.join(HF_TASKS)}")
    try:
        from pipeline.models import hf_checkpoint  # transformers loads only for a checkpoint
    except IMPORT_FAILURES as exc:
        failure = import_failure(exc)
        if failure is None:
            raise
        raise _missing_package(failure, f"{model} (a Hugging Face checkpoint)") from None
    path = Path(folder).expanduser().resolve()
    state = (model, str(path), repr(hf_checkpoint.folder_state(path)))
    if state not in _LOADED:  # every stage of one command resolves the spec: the folder is read once per version of it
        _LOADED[state] = validate(hf_checkpoint.checkpoint_spec(path, task or None), model)
    return _LOADED[state]


def load_spec(model: str) -> ModelSpec:
    """Load a model's spec by built-in name (`simple_nn`), module (`pkg.my_model`), path to a .py
    file, or Hugging Face checkpoint folder (`hf:PATH`, `hf:PATH#task=TASK`)."""
    if model.startswith(HF_PREFIX):
        return _hf_spec(model)
    key: tuple[str, ...] | None = None
    if model.endswith(".py") or "/" in model:
        path = _model_file(model)
        key = (str(path), hashlib.sha256(path.read_bytes()).hexdigest())
        if key in _LOADED:  # every stage of one command resolves the spec: the file runs once per version of it
            return _LOADED[key]
        module, where = _run_file(model, path), str(path)
    else:
        module = _import_module(model)
        where = str(module.__file__)  # None (a namespace package) reads as before in the messages
    if not hasattr(module, "SPEC"):
        raise SpecError("model", f"{where} does not define SPEC", f"add `{EXAMPLE}` at the bottom of the file")
    spec = validate(module.SPEC, where)
    if spec.source is None:
        spec = dataclasses.replace(spec, source=Path(inspect.getfile(module)))
    if key is not None:
        _LOADED[key] = spec
    return spec


def _model_file(model: str) -> Path:
    """The model file's path, or what is wrong with it (and the file beside it a typo likely meant)."""
    path = Path(model).resolve()
    if not path.is_file():
        near = nearby(path, lambda p: p.is_file() and p.suffix == ".py")
        raise SpecError(
            "model",
            f"model file {model} does not exist" + (f"; did you mean {Path(model).with_name(near)}?" if near else ""),
            "pass the path of a .py file that defines SPEC, or a built-in name such as simple_nn",
        )
    return path


def _run_file(model: str, path: Path) -> ModuleType:
    """The user's model file, run as a module of its own; any error it raises is theirs to fix."""
    module_spec = importlib.util.spec_from_file_location(f"user_model_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:  # not a Python source file
        raise SpecError(
            "model", f"model file {model} is not a Python module (it must end in .py)", "pass the path of the .py file that defines SPEC"
        )
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise _load_error(exc, str(path), path.stem) from None
    return module


def _import_module(model: str) -> ModuleType:
    """A built-in model (`simple_nn`) or an importable module (`pkg.my_model`); a name that is neither says which exist."""
    # The modules that define SPEC: a helper beside them (models/hf_common.py) is not a model.
    models = Path(__file__).parent.glob("[!_]*.py")
    known = ", ".join(sorted(p.stem for p in models if re.search(r"^SPEC\b", p.read_text(), re.M)))
    module_name = model if "." in model else f"pipeline.models.{model}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise _load_error(exc, module_name, module_name) from None  # the module exists; one of its imports does not
        if "." in model:
            raise SpecError(
                "model",
                f"no module named {model!r} on the Python path",
                "install or add its package to PYTHONPATH, or pass the path to the .py file",
            ) from None
        close = difflib.get_close_matches(model, known.split(", "), n=1)
        raise SpecError(
            "model",
            f"no built-in model named {model!r}" + (f"; did you mean {close[0]}?" if close else ""),
            f"use one of: {known}; or pass a path to your own .py file",
        ) from None
    except Exception as exc:
        raise _load_error(exc, module_name, module_name) from None
