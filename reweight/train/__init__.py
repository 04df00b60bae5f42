"""reweight.train."""
