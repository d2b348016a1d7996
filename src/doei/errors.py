"""The one exception type the CLI turns into a one-line message and exit code 2."""


class DoeiError(Exception):
    """Bad input or an unrecoverable condition, described in one line.

    The message must name the file, key or value at fault and what was expected, e.g.
    ``"gt/2007_000032.png: label 37 outside 0..20 (or 255)"``.
    """


class DoeiWarning(UserWarning):
    """Something the user should know that is not an error: a setting that can do nothing, an explicit
    override. The CLI prints each as one line ``doei <cmd>: warning: ...`` on stderr."""
