"""User-facing failures: one base class, one subclass per kind, each with its exit code.

The CLI turns these into a single line on stderr and the exit code; anything
else that escapes is a bug and keeps its traceback.
"""


_command_line = False  # set while a CLI command runs: failures are said in its words


def speak_command_line(on: bool) -> None:
    """From now on (until called with False), `user_message` gives the command line's words."""
    global _command_line
    _command_line = on


def user_message(error: BaseException) -> str:
    """What to tell the user of a failure: the command line's words (flags) while a CLI command runs,
    the API's (parameters) otherwise."""
    if _command_line and isinstance(error, VidcycleError):
        return error.cli_message
    return str(error)


class VidcycleError(Exception):
    """A failure the user can act on; the message says what, where and what to do."""

    exit_code = 1

    def __init__(self, message: str = "", *, cli: str | None = None):
        super().__init__(message)
        # The same message in the command line's words (flags, not the API's parameters), where they differ.
        self.cli_message = cli or message


class UsageError(VidcycleError):
    """A request that cannot work as asked (flags that contradict, a place that cannot be written)."""

    exit_code = 2


class RecipeError(VidcycleError):
    exit_code = 3


class MediaError(VidcycleError):
    exit_code = 4


class ModelError(VidcycleError):
    exit_code = 5


class DownloadError(ModelError):
    exit_code = 6


class FeaturesMissing(DownloadError):
    """The Inception weights (KID, FID) are neither in the store nor fetchable (exit 6, a download's); the
    message says where to put them."""


class DeviceError(VidcycleError):
    exit_code = 7


class OutputExistsError(VidcycleError):
    exit_code = 8


class PartialFailure(VidcycleError):
    """A batch job finished, but some of its inputs failed."""

    exit_code = 9


class TrainingError(VidcycleError):
    exit_code = 10


def first_line(error: Exception) -> str:
    """An exception's message cut to its first line (or its type's name), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
