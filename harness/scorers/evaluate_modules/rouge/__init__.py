"""Offline evaluate module folder: evaluate loads rouge.py from here by path."""
