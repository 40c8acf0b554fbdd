"""The bundled samples. Installed, this folder is the package ``eqaudit._samples`` (see setup.py),
which ``eqaudit demo`` audits; in a clone, run them from here (``make demo``)."""
