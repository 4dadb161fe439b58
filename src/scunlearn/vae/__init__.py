"""Model layer: the NB likelihood, the VAE, dropout, training, the seed-batched trainer, checkpoints."""
