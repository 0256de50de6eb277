"""Report tables built from metrics files alone."""
