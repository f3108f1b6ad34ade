"""The release's FLAN token stream, built in the tests and not by the library (an independent reference)."""

import numpy as np

from synpro_jax.influence.reference import format_prompt


def examples_end_to_end(examples, order, vocab) -> tuple[np.ndarray, np.ndarray]:
    """Every example as prompt tokens, answer tokens and an EOS (label 1 on the answer and the EOS), in ``order``
    (ids, one epoch after another), laid end to end in one stream: (tokens, labels)."""
    by_id = {e.id: e for e in examples}
    tokens, labels = [], []
    for ids in order:
        for i in ids:
            prompt = vocab.encode(format_prompt(by_id[i].prompt))
            answer = vocab.encode(" " + by_id[i].completion) + [vocab.eos_id]
            tokens += prompt + answer
            labels += [0] * len(prompt) + [1] * len(answer)
    return np.asarray(tokens), np.asarray(labels, np.float32)
