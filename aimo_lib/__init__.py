"""aimo_lib: SC-TIR for the AI Mathematical Olympiad."""

__version__ = "0.1.0"
