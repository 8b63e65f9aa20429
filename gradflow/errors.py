"""The two ways a user's input can be wrong. Stages turn either into one line and exit code 2
(gradflow.cli), never a traceback."""


class UserError(Exception):
    """Something the user can fix; the message names the culprit and what to do."""


class ParamsError(UserError, ValueError):
    """A params.yaml value that cannot be used; the message starts with the key path."""


class DataError(UserError, RuntimeError):
    """A data file, archive, checkpoint or table that cannot be used; the message says which
    file and what to do."""
