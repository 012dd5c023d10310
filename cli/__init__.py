"""skd.cli: the thin click front end (`skd ...`)."""
