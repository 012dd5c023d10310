"""skd.core: the library behind the `skd` CLI (no argv parsing, no printing of tables here)."""
