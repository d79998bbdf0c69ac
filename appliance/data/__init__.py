"""The data layer: reading a workflow, safe expressions, ROOT sources, per-branch specs, the feature contract
and the event stream. It knows nothing of models, jobs or HTTP.
"""
