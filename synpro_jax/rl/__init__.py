"""GRPO for the generators: the algorithm (``grpo.py``), its rewards (``rewards/``), and the learner."""
