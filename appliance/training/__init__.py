"""The training layer: the user's model, the training loop over the event stream, and the model bundle.

It builds on ``appliance.data`` and knows nothing of jobs or HTTP.
"""
