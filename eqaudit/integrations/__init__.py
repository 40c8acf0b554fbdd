"""Hooks into the training loops people already use: :mod:`.lightning` (PyTorch Lightning, the
optional extra ``lightning``). Nothing here is imported with ``eqaudit``; for a hand-written loop
see :class:`eqaudit.monitor.AuditMonitor`."""
