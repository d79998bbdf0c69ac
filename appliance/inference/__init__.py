"""Batch inference: a trained model bundle applied to whole ROOT files, written beside them as friend
trees."""
