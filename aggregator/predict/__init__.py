"""Prediction at the head node: scoring starting jobs with the active model and right-sizing
advice, and the training run that reads the store and registers a model."""
