"""Episodes: multi-turn rollouts through a sampler and the sandbox, and the groups a step trains on."""
