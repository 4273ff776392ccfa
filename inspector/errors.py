"""The typed errors that cross the API boundary.

A bad file or a bad signature is the user's problem to fix, so each error names the path and
what is wrong in one line; the CLI prints that line and exits with code 2. Bad packets are
never errors: they are counted and skipped.
"""


class InspectorError(Exception):
    """Base of every error inspector raises on purpose."""


class CaptureError(InspectorError):
    """A capture file cannot be read at all (missing, a directory, empty, not a capture)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):
        # Rebuilt from its own fields when it crosses from a forked process (``forked.py``):
        # the default would call it with the one formatted message.
        return (type(self), (self.path, self.reason))


class SignatureError(InspectorError):
    """A signature file is malformed: names the file, the key and the problem."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.key = key
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.path, self.key, self.reason))
