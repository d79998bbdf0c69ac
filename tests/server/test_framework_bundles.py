"""The worker checks and publishes the bundles of every framework: a SavedModel, or model.onnx with the
framework's own files in native/ (appliance.training.bundle), and refuses one that mixes or lacks them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.server.publisher import BundleRefused, BundleRules, checked_copy

NAME = "alice.higgs"


def onnx_bundle(base: Path, servable: bool = True) -> Path:
    bundle = base / "bundle"
    (bundle / "native").mkdir(parents=True)
    (bundle / "native" / "state_dict.pt").write_bytes(b"weights")
    if servable:
        (bundle / "model.onnx").write_bytes(b"onnx graph")
    params = {"name": NAME, "model": "model.onnx", "runtime": "onnx", "servable": servable, "features": {}}
    (bundle / "params.json").write_text(json.dumps(params))
    (bundle / "labels.txt").write_text("1\n0\n")
    (bundle / "metrics.json").write_text(json.dumps({"test": {"auc": 0.9}}))
    (bundle / "loss.png").write_bytes(b"\x89PNG")
    return bundle


def check(bundle: Path, tmp_path: Path) -> dict:
    return checked_copy(bundle, tmp_path / "checked", BundleRules(NAME, os.geteuid(), 1 << 20))


@pytest.mark.parametrize("servable", [True, False])
def test_an_onnx_bundle_is_copied_out(tmp_path, servable):
    params = check(onnx_bundle(tmp_path, servable), tmp_path)
    assert params["model"] == "model.onnx"
    assert (tmp_path / "checked" / "native" / "state_dict.pt").read_bytes() == b"weights"
    assert (tmp_path / "checked" / "model.onnx").is_file() == servable


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda b: (b / "model.onnx").unlink(), "lacks model.onnx"),
        (lambda b: (b / "native" / "state_dict.pt").unlink() or (b / "native").rmdir(), "lacks native"),
        (lambda b: (b / "saved_model.pb").write_bytes(b"graph"), "holds saved_model.pb"),
        (lambda b: (b / "native" / "x").symlink_to("/etc/shadow"), "symbolic link"),
        (
            lambda b: (b / "params.json").write_text(
                json.dumps({"name": NAME, "model": "x.pkl", "features": {}})
            ),
            "not the training's",
        ),
    ],
)
def test_an_onnx_bundle_that_is_not_proper_is_refused(tmp_path, spoil, reason):
    bundle = onnx_bundle(tmp_path)
    spoil(bundle)
    with pytest.raises(BundleRefused, match=reason):
        check(bundle, tmp_path)
    assert not (tmp_path / "checked").exists()
