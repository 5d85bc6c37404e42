"""Generation: the sampler protocol, the turn-stop rule, the Hugging Face sampler, the vLLM backend and gtpo's own
engine."""
