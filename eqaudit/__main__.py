"""``python -m eqaudit`` (also what ``torchrun -m eqaudit`` runs)."""

from .cli.main import main

main()
