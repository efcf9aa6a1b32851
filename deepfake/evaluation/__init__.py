"""Evaluation as the field reports it: ``evaluate(config)``, per-domain rows and means, metrics, tables and plots."""
