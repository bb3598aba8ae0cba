"""Datasets: the CDVAE-format benchmarks, user folders of structure files, statistics and loaders."""
