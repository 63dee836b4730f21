"""Trainer loop, evaluation, metrics, checkpoints."""
