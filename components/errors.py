"""The one exception type that means "the user's input is wrong" (the CLI prints it without a traceback)."""


class InputError(ValueError):
    """Bad user input; the message says what is wrong and where (file, row, field)."""
