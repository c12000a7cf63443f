"""Datasets: ImageFolder discovery and loading, channel statistics, the synthetic generator.

Import from the submodules (``common.datasets.imagefolder`` etc.); this package re-exports nothing
so that the synthetic generator can be used without importing torch.
"""
