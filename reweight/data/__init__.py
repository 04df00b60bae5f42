"""reweight.data."""
