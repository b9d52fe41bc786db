"""``python -m compat.cli`` (and ``torchrun -m compat.cli``) runs the command line."""

from compat.cli import main

main()
