"""Trainers for the KL autoencoder and for probes on latents (see the trainer issues)."""
