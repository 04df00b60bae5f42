"""reweight.group."""
