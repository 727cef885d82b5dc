"""The IPL method itself, independent of the generative model.

The latent mapper (code -> prompt vectors), the prompt text encoder, the
losses of both stages and Stage 2's text directions. Nothing here imports a
generator: the only link to one is the width of the code the mapper reads.
"""
