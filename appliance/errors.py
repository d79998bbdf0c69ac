"""Errors that describe bad user input, as opposed to bugs."""


class WorkflowError(Exception):
    """Bad input from the user: a missing file, an unknown branch, a malformed params file...

    The message names the culprit. Command lines print it with exit code 2; the HTTP API answers it with a
    JSON 4xx. Anything else that escapes is a bug.
    """
