"""Pruning criteria, one module each, behind a registry."""
