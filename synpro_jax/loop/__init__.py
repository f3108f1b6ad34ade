"""The SynPro rounds (pretrain -> probe -> GRPO -> synthesize -> mix -> continue): the resumable stage manifest
(``manifest``)."""
