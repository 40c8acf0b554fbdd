"""The HTML's worst samples of a worst_of check are the audit's own rows: each shown error is the
check's per-sample error (the maximum over its draws, as evaluated, ``mask: valid`` included)."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import write_spec


def test_worst_of_worst_samples_show_the_audited_error_under_mask_valid(project: Path) -> None:
    from eqaudit.engine.worst import check_samples
    from eqaudit.spec import load_spec

    (project / "models.py").write_text((project / "models.py").read_text() + (
        "\nclass Roll(torch.nn.Module):\n    def forward(self, x):\n        return torch.roll(x, 1, -1)\n"))
    path = write_spec(project, """
        model: {factory: models.py:Roll}
        input: {shape: [1, 8, 8]}
        samples: 64
        checks:
          - {name: wrot, both: {rotate: {degrees: [-30, 30]}}, worst_of: 4, mask: valid, threshold: 0.01}
    """)
    (found,) = check_samples(load_spec(path), device="cpu", worst_of={"wrot"})
    rows = [e.index for e in found.worst]
    assert len(rows) == 3 and len(set(rows)) == 3
    assert [e.error for e in found.worst] == [found.errors[r] for r in rows]
    assert [e.error for e in found.worst] == sorted(found.errors, reverse=True)[:3]


def test_worst_samples_of_a_grid_worst_of_check_use_the_draws_own_transforms(tmp_path: Path) -> None:
    """A grid's draws are fixed transforms, not the check's random one: the HTML view applies the
    draw's own (the check's rotate with the draw's None parameters raised before)."""
    from conftest import write_digits_spec
    from eqaudit.engine.worst import check_samples
    from eqaudit.spec import load_spec

    path = write_digits_spec(tmp_path / "grid.yaml", "  - name: grid\n    input: {rotate: {degrees: [-30, 30]}}\n"
                             "    worst_of: {grid: {degrees: [-20, 20, 5]}}\n", distance="relative_l2",
                             samples=64, seed=5)
    (found,) = check_samples(load_spec(path), device="cpu", worst_of={"grid"})
    assert len(found.worst) == 3
    assert [e.error for e in found.worst] == sorted(found.errors, reverse=True)[:3]
    for example in found.worst:
        assert example.transformed.shape == example.x.shape and not torch.equal(example.transformed, example.x)
