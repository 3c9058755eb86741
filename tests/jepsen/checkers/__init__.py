"""Checkers: each takes paired operations (see ../history.py) and returns a `Verdict`."""

from .verdict import Verdict

__all__ = ["Verdict"]
