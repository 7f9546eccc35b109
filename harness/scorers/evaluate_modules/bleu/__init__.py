"""Offline evaluate module folder: evaluate loads bleu.py from here by path."""
