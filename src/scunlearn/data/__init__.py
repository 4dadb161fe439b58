"""Data layer: sources, acquisition, simulation, preprocessing, splits and folds (no torch)."""
