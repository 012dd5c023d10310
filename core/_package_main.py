"""`python -m skd ...` (and so `torchrun --nproc-per-node N -m skd distill ...`): the `skd` command line.

Installed as skd/__main__.py by CMakeLists.txt (the package root is assembled by the build).
"""
from skd.cli.main import main

if __name__ == "__main__":
    main(prog_name="skd")
