"""The method: turn rewards, reward shaping, return-based advantages, credit per trajectory, and the policy losses.

Pure functions over tensors and turn records, no I/O; ``credit`` composes the others for a batch of groups."""
