"""Exporters that feed existing monitoring from the agent's latest snapshot."""
