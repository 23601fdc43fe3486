"""The one exception type users see: the CLI prints its message as a single line and exits non-zero."""


class UserError(Exception):
    """Bad input or environment the user can fix (missing file, malformed label, wrong checkpoint)."""
