"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(ValueError):
    """A mistake in the user's input: reported as one line, never as a traceback.

    `run.py` catches it, prints the message and exits non-zero; library users can
    catch it to tell bad input apart from bugs.
    """
