"""The one exception type a user sees: a single clear sentence, exit status 2."""


class UserError(Exception):
    """Bad input from the user (a path, a flag, a file); the CLI prints it and exits 2."""
