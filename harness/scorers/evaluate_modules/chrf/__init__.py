"""Offline evaluate module folder: evaluate loads chrf.py from here by path."""
