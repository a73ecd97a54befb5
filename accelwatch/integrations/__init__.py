"""Ready-made callbacks: ``accelwatch.integrations.lightning`` and ``.transformers``.

Each imports its framework only when it is installed, so importing the module never fails;
without the framework the callback is a plain class with the same methods (what the tests drive).
"""
