"""synpro_jax: SynPro (generating pretraining tokens from organic data) in JAX/Flax for TPU pods."""

from setuptools import find_packages, setup

setup(
    name="synpro_jax",
    version="0.1.0",
    description="SynPro in JAX/Flax: RL-trained generators that rephrase and reformat organic pretraining data",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["synpro_jax", "synpro_jax.*"]),
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
        "tensorboardX",
    ],
    extras_require={
        # torch and transformers are only ever a test/benchmark peer, never used by the library.
        "test": ["pytest>=8", "torch==2.13.0", "transformers>=4.48,<6"],
        "bench": ["torch==2.13.0", "transformers>=4.48,<6"],
    },
    entry_points={"console_scripts": ["synpro=synpro_jax.cli:main"]},
)
