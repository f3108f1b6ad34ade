"""The SynPro rounds (pretrain -> probe -> GRPO -> synthesize -> mix -> continue): the stage plan of an experiment
(``plan``) and the resumable stage manifest ``loop.json`` (``manifest``)."""
