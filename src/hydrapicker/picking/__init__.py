"""Picking with a trained model: the network over a micrograph, the particle size, picks, a folder of files."""
