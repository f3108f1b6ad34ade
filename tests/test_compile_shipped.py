"""Every shipped TPU experiment fits the topologies it names (a `# topology: v5e-8, v4-32` line): `synpro compile`
through libtpu, XLA:TPU's memory analysis of the experiment's own programs, as shipped, against the chip's HBM."""

import importlib.util
import json
from pathlib import Path
import re

import pytest

from synpro_jax import cli
from synpro_jax import compile as aot

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY_LINE = re.compile(r"^#\s*topology:\s*(.+)$", re.MULTILINE)
# The experiments sized for TPUs; each must keep its topology line (a missing one would drop its check).
TPU_EXPERIMENTS = {"olmo_400m_dclm.gin", "olmo_1b_dclm.gin", "olmo2_grpo_rephrase_v5e.gin"}


def shipped() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "gin" / "experiments").glob("*.gin")):
        match = TOPOLOGY_LINE.search(path.read_text())
        if match:
            found += [(path.name, t.strip()) for t in match.group(1).split(",") if t.strip()]
    return found


def test_every_tpu_experiment_names_known_topologies():
    named = shipped()
    assert {name for name, _ in named} >= TPU_EXPERIMENTS
    assert all(topology in aot.TOPOLOGIES for _, topology in named), named


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (pip install -e '.[test]')"
)
@pytest.mark.parametrize("experiment, topology", shipped())
def test_a_shipped_experiment_fits_its_topology(experiment, topology, tmp_path, capsys):
    out = tmp_path / "memory.json"
    code = cli.main(["compile", f"--gin_file=gin/experiments/{experiment}", f"--topology={topology}", f"--json={out}"])
    printed = capsys.readouterr()
    reports = json.loads(out.read_text())
    assert reports, printed.err
    for r in reports:  # XLA:TPU's own analysis (not XLA:CPU's estimate), over every chip
        assert r["target"].startswith(f"{topology} (") and r["devices"] == aot.chip_count(topology), r["target"]
    assert code == 0 and all(r["fits"] for r in reports), printed.out + printed.err
