"""Tests for ``liegg_lightning.report``: a ``SymmetryReport`` saved, loaded and validated."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import O5Model
from torch import Tensor

from liegg_lightning import SymmetryReport, VectorAction, analyze

pytestmark = pytest.mark.usefixtures("single_thread")

O5 = VectorAction(dim=5, components=2)


def test_report_serialises_and_round_trips(o5_model: O5Model, o5_inputs: Tensor, tmp_path) -> None:
    report = analyze(o5_model, o5_inputs, O5, reference_algebra="so", known_generators={"scale": torch.eye(5)})
    data = report.to_dict()
    text = json.dumps(data)  # JSON-safe
    assert json.loads(text)["nullity"] == 10
    for rep in (report, analyze(o5_model, o5_inputs[:20], O5)):  # with and without optional fields
        path = tmp_path / "sub" / "report.json"
        rep.save(path)
        back = SymmetryReport.load(path)
        for name in rep.__dataclass_fields__:
            a, b = getattr(rep, name), getattr(back, name)
            if isinstance(a, Tensor):
                assert b.dtype == torch.float64, name
                assert torch.equal(a, b), name
            elif isinstance(a, float) and math.isnan(a):  # undefined stays undefined (border_share here)
                assert isinstance(b, float), name
                assert math.isnan(b), name
            else:
                assert a == b, name
        assert back.generator_shape == (5, 5)
        assert set(back.summary()) == set(rep.summary())


def test_report_load_validates(tmp_path) -> None:
    good = analyze(O5Model().eval(), torch.randn(32, 10, generator=torch.Generator().manual_seed(0)), O5).to_dict()
    path = tmp_path / "r.json"

    def load(obj) -> None:
        path.write_text(json.dumps(obj))
        SymmetryReport.load(path)

    with pytest.raises(ValueError, match="JSON object.*got list"):
        load([good])
    with pytest.raises(ValueError, match="missing required field.*nullity"):
        load({k: v for k, v in good.items() if k != "nullity"})
    with pytest.raises(ValueError, match="missing required field.*generators, symmetry_variance"):
        load({k: v for k, v in good.items() if k not in ("generators", "symmetry_variance")})
    with pytest.raises(ValueError, match="`nullity` to be an int"):
        load({**good, "nullity": 2.5})
    with pytest.raises(ValueError, match="`nullity` to be an int"):
        load({**good, "nullity": "10"})
    with pytest.raises(ValueError, match=r"`generators` of shape \(25, 4, 4\)"):
        load({**good, "generator_shape": [4, 4]})
    with pytest.raises(ValueError, match=r"`variance_stderr` of shape \(25,\)"):
        load({**good, "variance_stderr": [0.1, 0.2]})
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON SymmetryReport"):
        SymmetryReport.load(path)
    load(good)  # and the good one loads


@pytest.mark.parametrize(("field", "value", "match"), [
    ("nullity", -3, r"`nullity` between 0 and m = 25"),
    ("nullity", 1000000, r"`nullity` between 0 and m = 25"),
    ("nullity", True, r"`nullity` to be an int"),
    ("symmetry_variance", "NaN", r"`symmetry_variance` to be a number or null"),
    ("symmetry_variance", [0.1], r"`symmetry_variance` to be a number or null"),
    ("symmetry_bias", {"x": 1}, r"`symmetry_bias` to be a number or null"),
    ("closure_error", "0", r"`closure_error` to be a number or null"),
    ("known_variances", [1.0, 2.0], r"`known_variances` to be an object of name -> number"),
    ("known_variances", {"rotation": "small"}, r"`known_variances` to be an object"),
    ("num_samples", -1, r"`num_samples` to be an int >= 0"),
    ("variances", 3.0, r"`variances` to be a \(nested\) list of numbers"),
    ("variances", [[0.1] * 25], r"`variances` to be a list of numbers, got shape \(1, 25\)"),
    ("singular_values", ["a"] * 25, r"`singular_values` to be a \(nested\) list of numbers"),
])
def test_report_load_names_every_malformed_field(tmp_path, field: str, value: object, match: str) -> None:
    # the malformed files of issue 31: each raises ValueError naming its field, never TypeError or a bad report
    good = analyze(O5Model().eval(), torch.randn(32, 10, generator=torch.Generator().manual_seed(0)), O5).to_dict()
    assert len(good["variances"]) == 25
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**good, field: value}))
    with pytest.raises(ValueError, match=match):
        SymmetryReport.load(path)


def test_report_load_of_deep_nesting_is_a_value_error(tmp_path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)  # deeper than Python's recursion limit
    with pytest.raises(ValueError, match="not a JSON SymmetryReport"):
        SymmetryReport.load(path)
    good = analyze(O5Model().eval(), torch.randn(32, 10, generator=torch.Generator().manual_seed(0)), O5).to_dict()
    nested: object = 0.0
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(ValueError, match="`variance_stderr`"):
        SymmetryReport.from_dict({**good, "variance_stderr": nested})
