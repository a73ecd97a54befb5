"""Sources defined only in tests: they prove a new source needs no change elsewhere."""
