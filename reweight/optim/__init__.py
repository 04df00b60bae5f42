"""reweight.optim."""
