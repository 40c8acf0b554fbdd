"""Models for the bundled eqaudit sample (``sample_models.digits:SmallCNN``)."""
