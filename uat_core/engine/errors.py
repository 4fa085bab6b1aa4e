"""One exception type for everything a user can get wrong.

The CLI, the app and the notebooks catch :class:`UATError` and show its message as one line;
anything else is a bug and keeps its traceback. :class:`UATWarning` is its counterpart for what is
skipped without stopping the work.
"""


class UATError(Exception):
    """A user-facing error: bad input, a missing file, a diverging run. The message is one line."""


class UATWarning(UserWarning):
    """A user-facing warning, one line: something was passed over and the work went on (a corrupt image met
    while streaming a folder is skipped and named). The CLI prints it as "warning: ..."."""
