"""Tower features, extracted once: the on-disk cache, batched extraction across ranks, and what a head reads."""
