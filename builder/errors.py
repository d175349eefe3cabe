"""Errors meant for the user: each carries a one-line message naming the item and the fix."""


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
