"""reweight.curriculum."""
