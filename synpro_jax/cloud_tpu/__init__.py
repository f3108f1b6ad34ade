"""Cloud TPU slices for synpro jobs: the gcloud command lines (gcloud.py), the babysitter that keeps a job running
through preemptions (babysit.py), and the command lines of the tpu/ scripts (create, install, launch, babysit,
delete), which `synpro sweep --launcher=tpu` uses too.

Standard library only (with synpro_jax's exit codes and heartbeat interval, themselves standard library): the scripts
run with a bare Python beside the Google Cloud CLI, from a checkout (``python tpu/create.py ...``, tpu/README.md) or
wherever synpro_jax is installed (``python -m synpro_jax.cloud_tpu.create ...``).
"""
