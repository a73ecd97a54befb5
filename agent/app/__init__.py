"""The application: CLI, commands and the recording session wiring sources, store and consumers.

This layer sits on top: it may import collectors, exporters and the TUI; the core below
(model, catalog, store, sampler, analysis, readers) never imports it.
"""
