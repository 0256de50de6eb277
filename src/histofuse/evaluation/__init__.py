"""Splits and metrics."""
