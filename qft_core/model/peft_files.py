"""The file names of a PEFT adapter folder, shared by training (which writes one) and evaluation and the CLI (which
check one) without importing PEFT."""

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
