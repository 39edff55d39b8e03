"""rankjax: align language models by re-ranking their proposals, in JAX."""

__version__ = "0.1.0"
