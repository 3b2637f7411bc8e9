"""From a trained adapter to a deployment: merge, quantize, verify and bundle (serving it is qft_core/serve/)."""
