"""One module per tower family; each registers itself, and only ``deepfake.towers.registry`` imports them."""
