"""gtpo's generation engine: continuous batching over a slot KV cache, CUDA-graph decode, device sampling.

See docs/generation.md for the design and its measurements. ``EngineSampler`` is what the rest of gtpo
uses: a ``StreamingSampler`` whose ``turn_stream()`` is the ``GenerationEngine`` that ``gtpo.rollout.episode``
drives.
"""

from gtpo.generation.engine.engine import EngineOptions, GenerationEngine
from gtpo.generation.engine.sampler import EngineSampler

__all__ = ["EngineOptions", "EngineSampler", "GenerationEngine"]
