"""reweight.reparam."""
