"""Evaluation: sampling through an engine (generate) and metrics over scored samples; the stage is stages/eval.py."""
