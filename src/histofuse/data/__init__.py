"""Targets: expression tables, gene selection and target transforms."""
