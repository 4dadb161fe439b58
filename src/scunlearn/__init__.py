"""scunlearn: machine unlearning for single-cell VAEs, audited by membership inference.

The library behind the Snakemake workflow: data (simulate, acquire, preprocess, split),
the negative-binomial VAE, the post-hoc membership-inference audit, the unlearning
method registry and the report. Scripts in ``workflow/scripts`` are thin wrappers.
"""

__version__ = "0.1.0"


class ScunlearnError(Exception):
    """A user-facing error: bad input, bad config or a missing file, with a clear message."""
