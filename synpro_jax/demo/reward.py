"""``faithfulness_facts``: the demo world's exact faithfulness reward, for either operation.

The release judges faithfulness with a fine-tuned verifier and the local stand-in (``faithfulness_lexical``)
with word overlap. In the world every fact is known, so a rewrite can be scored exactly
(:func:`~synpro_jax.demo.world.fact_check`): the share of the person's facts it states, minus the share of the
values it states that are wrong (an invented city, date, university, ...). 1 is a perfect rewrite; an answer
without its heading scores 0, as in the release.

The source of each completion must be one of the world's organic biographies (the world is rebuilt from
``world.json``, written by the demo); any other source cannot be judged: RewardError.

Select it in gin (``import synpro_jax.demo.reward`` first, so it is registered)::

    synpro.RewardsConfig.variants = {"faithfulness": "faithfulness_facts"}
    synpro.RewardsConfig.options = {"faithfulness": {"world": "runs/demo/world/world.json"}}
"""

from __future__ import annotations

import functools
import json

from etils.epath import Path
import numpy as np

from synpro_jax.demo import world as W
from synpro_jax.rl.rewards.base import RewardError, RewardInputs, register_reward
from synpro_jax.rl.rewards.common import answers, group_sources


@functools.lru_cache(maxsize=4)
def _people_by_source(world_json: str) -> dict[str, W.Person]:
    spec = json.loads(Path(world_json).read_text(encoding="utf-8"))
    world = W.make_world(**spec["world"])
    return {W.organic_biography(p).strip(): p for p in world.people}


@register_reward("faithfulness_facts")
class FaithfulnessFactsReward:
    name = "faithfulness_facts"

    def __init__(self, world: str):
        if not Path(world).is_file():
            raise ValueError(f"faithfulness_facts world={world!r}: no such file (the demo writes world/world.json)")
        self.world = str(Path(world).resolve())
        self.people = _people_by_source(self.world)

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        texts = answers(inputs)
        _, sources, where = group_sources(inputs)
        people = []
        for s in sources:
            person = self.people.get(s.strip())
            if person is None:
                raise RewardError(
                    f"faithfulness_facts: a source is not an organic biography of {self.world}: {s[:60]!r}"
                )
            people.append(person)
        return np.array(
            [W.fact_check(people[where[i]], t).score if t else 0.0 for i, t in enumerate(texts)], np.float32
        )
