"""FeatureSpec: normalisation, padding, truncation, masks and serialisation, with exact values."""

import awkward as ak
import numpy as np
import pytest

from appliance.data.features import BranchStats, FeatureSpec
from servicecore.errors import BadInputError


def make_spec(**options):
    flat = [BranchStats("x", "flat", min=1.0, max=5.0, mean=3.0, std=2.0)]
    jagged = [BranchStats("j", "jagged", min=0.0, max=10.0, mean=5.0, std=5.0, length=2, max_length=3)]
    return FeatureSpec(flat, jagged, **options)


def test_minmax_padding_and_truncation_values():
    spec = make_spec()
    x = spec.transform({"x": np.array([1.0, 3.0, 5.0]), "j": ak.Array([[10.0, 5.0, 0.0], [], [2.5]])})
    assert spec.columns == ["x", "j[0]", "j[1]"]
    np.testing.assert_allclose(
        x,
        [
            [0.0, 1.0, 0.5],  # third element truncated
            [0.5, 0.0, 0.0],  # empty list padded with nan_value
            [1.0, 0.25, 0.0],
        ],
    )
    assert x.dtype == np.float32


def test_standardisation_mask_and_nan_value():
    spec = make_spec(normalisation="standard", mask=True, nan_value=-1.0)
    x = spec.transform({"x": [3.0, np.nan], "j": [[5.0], [np.inf, 10.0]]})
    assert spec.columns == ["x", "j[0]", "j[1]", "j.mask[0]", "j.mask[1]"]
    np.testing.assert_allclose(
        x,
        [
            [0.0, 0.0, -1.0, 1.0, 0.0],
            [-1.0, -1.0, 1.0, 1.0, 1.0],  # non-finite values become nan_value, but the slot is present
        ],
    )


def test_constant_branch_maps_to_zero():
    spec = FeatureSpec([BranchStats("c", "flat", min=2.0, max=2.0)], [])
    np.testing.assert_array_equal(spec.transform({"c": [2.0, 2.0]}), [[0.0], [0.0]])


def test_new_branches_are_computed_from_raw_inputs():
    spec = FeatureSpec(
        [BranchStats("logE", "flat", min=0.0, max=1.0)],
        [],
        new_branches={"logE": {"def": "log(E)", "type": "flat"}},
    )
    assert spec.input_branches == ["E"]
    np.testing.assert_allclose(spec.transform({"E": [1.0, np.e]}), [[0.0], [1.0]], rtol=1e-6)


def test_round_trip_through_dict_keeps_layout_and_values():
    spec = make_spec(mask=True)
    again = FeatureSpec.from_dict(spec.to_dict())
    data = {"x": [2.0], "j": [[1.0, 2.0, 3.0]]}
    np.testing.assert_array_equal(spec.transform(data), again.transform(data))
    assert again.columns == spec.columns and again.dim == 5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"j": [[1.0]]}, "branch 'x' is missing"),
        ({"x": [1.0], "j": [1.0]}, "must hold a list of numbers"),
        ({"x": [[1.0]], "j": [[1.0]]}, "must hold one number per event"),
        ({"x": [1.0, 2.0], "j": [[1.0]]}, "has 1 events, expected 2"),
        ({"x": ["a"], "j": [[1.0]]}, "must hold one number per event"),
    ],
)
def test_bad_raw_inputs_are_named(data, message):
    with pytest.raises(BadInputError, match=message):
        make_spec().transform(data)


def test_unknown_format_is_refused():
    with pytest.raises(BadInputError, match="unsupported feature spec format"):
        FeatureSpec.from_dict({"format": "something-else", "flat": [], "jagged": []})
