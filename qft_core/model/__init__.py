"""Models: the offline Qwen3 tokenizer, the model registry and the Qwen3-Thinking chat format."""
