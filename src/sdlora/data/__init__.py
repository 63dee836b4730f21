"""Datasets, class orders and task splits."""
