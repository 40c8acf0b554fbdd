"""``python -m eqaudit`` (also what ``torchrun -m eqaudit`` runs)."""

from .cli import main

main()
