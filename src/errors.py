"""The errors that mean "bad input from the user": each message says what was wrong and what to do.

The entry points print such a message as one line and exit with status 2; anything else is a bug
or a failed run and keeps its traceback.
"""


class InputError(Exception):
    """Bad input from the user (a config value, a file); the message says what to fix."""


class ConfigError(InputError, ValueError):
    """A config value that cannot work; the message names the key."""
