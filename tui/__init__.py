"""Textual terminal UI over the agent's reader interface."""
