"""Offline data: the training corpus builder and the labelled evaluation sets."""
