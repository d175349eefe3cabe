"""Errors meant for the user: each carries a one-line message naming the item and the fix."""


def first_line(error: BaseException, limit: int = 200, *, typed: bool = False) -> str:
    """The first line of ``error``'s message, cut to ``limit`` characters, as a one-line error
    quotes it; the exception's type when the message is empty (``typed`` puts it before the text)."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    text = lines[0] if len(lines[0]) <= limit else lines[0][: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if typed else text


class BuilderError(Exception):
    """Base class: the CLI prints ``str(error)`` as one line, without a traceback."""


class RecipeError(BuilderError):
    """A recipe (or a ``--set`` override) is malformed."""


class ComponentError(BuilderError):
    """A generator, oracle or model could not be built or loaded."""


class CheckpointError(ComponentError):
    """A checkpoint is missing, unsafe to load, or does not fit its model."""


class SourceError(BuilderError):
    """The source data set cannot be read as configured."""


class OutputError(BuilderError):
    """The output directory cannot be written as asked."""
