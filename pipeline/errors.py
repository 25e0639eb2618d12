"""Errors a user can act on: each says what went wrong, where, and what to do."""


class PipelineError(Exception):
    """A stage failed; the message names the stage, the problem and the fix."""

    def __init__(self, stage: str, problem: str, fix: str):
        self.stage = stage
        self.problem = problem
        self.fix = fix
        super().__init__(f"[{stage}] {problem}\n  what to do: {fix}")


class IntegrityError(PipelineError):
    """An artifact is missing, or differs from what the manifest recorded."""


class ParityError(PipelineError):
    """An engine's outputs differ from eager PyTorch beyond the tolerance."""


class SpecError(PipelineError):
    """A model description is missing a field or has a wrong one."""


class RequestError(PipelineError):
    """A request asks for what the model's contract does not allow (a 400 at a server): checked before any work."""
