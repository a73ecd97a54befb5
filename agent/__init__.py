"""accelwatch agent: the runtime core (model, catalog, store, sampler, CLI)."""

__version__ = "0.1.0"
