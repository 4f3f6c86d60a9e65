"""Shared test settings."""

import torch

# The test models are tiny: one thread is fastest, and on a loaded 2-core machine torch's spinning
# worker threads make one-bag-per-step training an order of magnitude slower.
torch.set_num_threads(1)
