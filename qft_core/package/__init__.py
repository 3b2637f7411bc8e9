"""From a trained adapter to a deployment: merge, quantize, verify, bundle and serve."""
