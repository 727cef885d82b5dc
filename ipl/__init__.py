"""IPL: zero-shot generative model adaptation via image-specific prompt learning."""
