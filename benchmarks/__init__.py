"""skd.benchmarks: scripts that time things and return JSON-able dicts (used by `skd bench`)."""
