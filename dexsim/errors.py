"""User-facing errors: the CLI prints `str(err)` as one line on stderr and exits with status 2."""


class UserError(Exception):
    """Bad input from the user (a file, a field or a flag). Its message names which."""
