"""Training: bags in memory (data), the loop (loop), run directories (run), optimisers (optim)."""

import os

# oneDNN caches one primitive per matmul shape (1024 by default). MIL bags all differ in length, so the
# cache is never hit and only holds memory: 0.4 GB after 60 CAMELYON16-sized bf16 steps, and the steps
# ran no faster with it (benchmarks/README.md). Read by oneDNN at its first use; a user's setting wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
