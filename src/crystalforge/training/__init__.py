"""Training any family: run configs, a Lightning adapter around ``model.loss(batch)``, EMA, checkpoints, loading."""
