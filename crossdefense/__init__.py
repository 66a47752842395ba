"""crossdefense: instruction-tune LLMs to refuse harmful long documents across NLP tasks."""

__version__ = "0.1.0"


class UserError(Exception):
    """A mistake in the user's input: scripts print its message on one line and exit non-zero."""
