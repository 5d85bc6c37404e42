"""Generation: the sampler protocol, the Hugging Face sampler, the vLLM backend and gtpo's own engine."""
