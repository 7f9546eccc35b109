"""Offline evaluate modules (rouge, bleu, chrf) loaded by path with ``harness.scorers.local.load_metric``.

Each sub-folder holds one evaluate script named after the folder, the layout ``evaluate.load`` expects
for a local path. The scripts import only evaluate, datasets, rouge-score and sacrebleu (evaluate
copies a script into its modules cache before importing it, so it cannot import its neighbours).
"""
