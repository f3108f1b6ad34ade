"""synpro_jax: SynPro (generating pretraining tokens from organic data) in JAX/Flax."""

import os

# gs:// paths go through gcsfs, not TensorFlow's GCS client: it is the client the tests prove against a GCS emulator
# (TensorFlow's has no endpoint setting, and its writes fail there), and it needs no TensorFlow. Set before etils
# first asks (it caches the answer); EPATH_USE_TF=true in the environment chooses TensorFlow's.
os.environ.setdefault("EPATH_USE_TF", "false")
# gcsfs's experimental hierarchical-namespace layer asks a gRPC storage-control API about each bucket first; plain
# buckets do not need it, the emulator cannot answer it, and the tests prove the plain client.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

__version__ = "0.1.0"
