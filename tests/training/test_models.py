"""Loading the user's model: Python files in the original's style, declarative JSON models, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.training.models import build_json_model, load_model
from servicecore.errors import BadInputError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_python_model_is_the_originals_classifier():
    model, encoding = load_model(EXAMPLES / "model.py", 1803, 2)
    # The original's open-data model: 239k parameters.
    assert model.count_params() == 1803 * 128 + 128 + 128 * 64 + 64 + 65
    assert encoding.mode == "binary"


def test_original_style_input_shape_keyword_still_works(tmp_path):
    path = write(
        tmp_path,
        "old.py",
        """
from tensorflow import keras
def model(idim):
    m = keras.models.Sequential()
    m.add(keras.layers.Dense(8, activation="relu", input_shape=(idim,)))
    m.add(keras.layers.Dense(2, activation="softmax"))
    m.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return m
""",
    )
    _, encoding = load_model(path, 5, 2)
    assert encoding.mode == "onehot"
    assert encoding.targets(np.array([1, 0]), 2).tolist() == [[0, 1], [1, 0]]


def test_example_json_models_build_and_choose_the_target_encoding():
    model, encoding = load_model(EXAMPLES / "model.json", 10, 2)
    assert model.count_params() == 10 * 128 + 128 + 128 * 64 + 64 + 65
    assert encoding.mode == "binary"
    model, encoding = load_model(EXAMPLES / "model_multiclass.json", 10, 3)
    assert encoding.mode == "sparse"
    assert encoding.targets(np.array([2, 0]), 3).tolist() == [2, 0]


def test_json_model_options_reach_keras():
    model = build_json_model(
        {
            "layers": [
                {"type": "Dense", "units": 3, "activation": "tanh"},
                {"type": "Dense", "units": 1, "activation": "sigmoid"},
            ],
            "optimizer": {"name": "sgd", "learning_rate": 0.5, "momentum": 0.9},
        },
        4,
        2,
    )
    assert model.layers[0].activation.__name__ == "tanh"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.5)
    assert model.loss == "binary_crossentropy"  # chosen from the single output unit


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import keras\n", "defines no function model(idim)"),
        ("model = 3\n", "not a function model(idim)"),
        ("def model(idim):\n    raise RuntimeError('boom')\n", "model(7) raised RuntimeError: boom"),
        ("def model(idim):\n    return 'a string'\n", "returned a str, not a Keras model"),
        (
            "import keras\ndef model(idim):\n"
            "    return keras.Sequential([keras.Input((idim,)), keras.layers.Dense(1)])\n",
            "not compiled",
        ),
        ("def model(idim:\n", "failed to load: SyntaxError"),
        ("import sys\nsys.exit(3)\n", "failed to load: SystemExit"),
    ],
)
def test_bad_python_model_files_are_refused_with_the_culprit_named(tmp_path, source, message):
    path = write(tmp_path, "user_model.py", source)
    with pytest.raises(BadInputError, match=r"user_model\.py") as err:
        load_model(path, 7, 2)
    assert message in str(err.value)


def test_input_dimension_that_does_not_match_the_data_is_refused(tmp_path):
    path = write(
        tmp_path,
        "fixed.py",
        """
import keras
def model(idim):
    m = keras.Sequential([keras.Input((12,)), keras.layers.Dense(1, activation="sigmoid")])
    m.compile(loss="binary_crossentropy", optimizer="adam")
    return m
""",
    )
    expected = r"does not accept the data's 7 input features \(the model expects 12\)"
    with pytest.raises(BadInputError, match=expected):
        load_model(path, 7, 2)


@pytest.mark.parametrize(
    ("units", "classes", "message"),
    [(1, 3, "1 output unit but the data has 3 classes"), (4, 3, "4 output units but the data has 3 classes")],
)
def test_output_units_must_fit_the_classes(units, classes, message):
    data = {"layers": [{"type": "Dense", "units": units, "activation": "sigmoid"}]}
    model = build_json_model(data, 5, classes)
    from appliance.training.models import check_model

    with pytest.raises(BadInputError, match=message):
        check_model(model, 5, classes)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"layers": [{"type": "Conv9D", "units": 3}]}, "layer 1: unknown layer type 'Conv9D'"),
        ({"layers": [{"type": "Lambda", "function": "import os"}]}, "unknown layer type 'Lambda'"),
        ({"layers": [{"type": "Dense", "units": 4, "activation": "evil"}]}, "unknown activation 'evil'"),
        ({"layers": [{"type": "Dense"}]}, "Dense needs units"),
        ({"layers": [{"type": "Dense", "units": "4"}]}, "option 'units' has the wrong type"),
        ({"layers": [{"type": "Dense", "units": 4, "kernel": 1}]}, "Dense takes no option 'kernel'"),
        ({"layers": [{"type": "Dropout", "rate": 1.5}]}, "rate must be in [0, 1)"),
        ({"layers": []}, "non-empty list"),
        ({"layers": [{"units": 3}]}, 'a layer is an object with a "type"'),
        ({"layers": [{"type": "Dense", "units": 1}], "loss": "no_such_loss"}, "unknown loss 'no_such_loss'"),
        ({"layers": [{"type": "Dense", "units": 1}], "optimizer": "adamax9"}, "unknown optimizer 'adamax9'"),
        (
            {"layers": [{"type": "Dense", "units": 1}], "optimizer": {"name": "adam", "lr_decay": 1}},
            "unknown optimizer option 'lr_decay'",
        ),
        ({"layers": [{"type": "Dense", "units": 1}], "metrics": ["nope"]}, "unknown metric 'nope'"),
        ({"layers": [{"type": "Dense", "units": 1}], "callbacks": []}, "unknown key(s) callbacks"),
        ([1, 2], "a JSON model is an object"),
    ],
)
def test_bad_json_models_are_refused(tmp_path, data, message):
    path = write(tmp_path, "bad.json", json.dumps(data))
    with pytest.raises(BadInputError) as err:
        load_model(path, 5, 2)
    assert message in str(err.value)
    assert "bad.json" in str(err.value)


def test_invalid_json_and_missing_files_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="not valid JSON"):
        load_model(write(tmp_path, "broken.json", "{layers"), 5, 2)
    with pytest.raises(BadInputError, match="does not exist"):
        load_model(tmp_path / "absent.py", 5, 2)


def test_probabilities_from_logits_and_softmax():
    from appliance.training.models import TargetEncoding

    binary = TargetEncoding("binary", 1).probabilities(np.array([[0.0], [100.0]]))
    assert binary[:, 1] == pytest.approx([0.5, 1.0])
    softmax = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert TargetEncoding("sparse", 2).probabilities(softmax) == pytest.approx(softmax)
    logits = TargetEncoding("onehot", 3).probabilities(np.array([[1.0, 1.0, 1.0]]))
    assert logits == pytest.approx(np.full((1, 3), 1 / 3))
