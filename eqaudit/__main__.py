"""``python -m eqaudit`` (also what ``torchrun -m eqaudit`` runs)."""

from .cli.app import main

main()
