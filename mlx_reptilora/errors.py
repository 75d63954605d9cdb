"""One exception type for problems the user can fix: the CLI prints its message as one line."""


class UserError(Exception):
    """Bad input or environment: printed as `error: <message>` with exit status 2, no traceback."""
