"""Using a trained model: the sampler every model shares, and evaluation on a whole validation split."""

from lmzoo.inference.sampling import SamplingSettings, complete, generate, sample_text, start_ids

__all__ = ["SamplingSettings", "complete", "generate", "sample_text", "start_ids"]
