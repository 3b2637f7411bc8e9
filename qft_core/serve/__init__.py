"""Serving a deployment package: the OpenAI-compatible server, the served model behind it, and the vLLM / SGLang
command lines for GPUs."""
