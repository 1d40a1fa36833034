"""Errors a user can act on: each one names the file or key, what was expected and what was found."""

from __future__ import annotations


class RqfError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class ConfigError(RqfError):
    """A pipeline file or override that does not match what the components declare."""


class DataError(RqfError):
    """A data file that is missing, malformed or inconsistent."""


class PluginError(RqfError):
    """A plugin that failed to load or registered something inconsistent."""
