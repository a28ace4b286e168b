"""Importable test helpers (never import from another test module)."""
