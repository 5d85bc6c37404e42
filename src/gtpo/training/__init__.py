"""The policy update: packing trajectories into micro-batches and the optimizer step."""
