"""Panels of the accelwatch terminal UI."""
