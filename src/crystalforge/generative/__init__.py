"""Generative models: the ``GenerativeModel`` protocol and sampling plan, and the joint flow/diffusion family."""
