"""Training a head on cached features: ``train(config)``, the epoch loop, its schedule, resumable state, head comparison."""
