"""Sampling any ``GenerativeModel``: templates, jobs, the run loop over ``model.sample``, resumable runs to disk."""
