"""One exception type for everything a user can get wrong.

The CLI, the app and the notebooks catch :class:`UATError` and show its message as one line;
anything else is a bug and keeps its traceback.
"""


class UATError(Exception):
    """A user-facing error: bad input, a missing file, a diverging run. The message is one line."""
