"""The one exception type the CLI turns into a one-line message and exit code 2."""


class DoeiError(Exception):
    """Bad input or an unrecoverable condition, described in one line.

    The message must name the file, key or value at fault and what was expected, e.g.
    ``"gt/2007_000032.png: label 37 outside 0..20 (or 255)"``.
    """
