"""One whole training run: workflow, specs, stream, the trainer's epochs, evaluation, ONNX export, bundle and
publishing; ``run_training`` is what ``mlaas4hep train`` and the job worker call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.data.features import FeatureSpec
from appliance.data.specs import load_or_compute_specs
from appliance.data.streaming import EventStream
from appliance.data.workflow import Workflow, load_workflow
from appliance.training.bundle import check_output_directory, write_bundle
from appliance.training.command import now
from appliance.training.distributed import (
    cluster_from_env,
    create_strategy,
    describe,
    refuse_framework,
)
from appliance.training.feature_cache import DEFAULT_FEATURE_CACHE_MB, FeatureCache
from appliance.training.frameworks import (
    FrameworkModel,
    TorchModel,
)
from appliance.training.models import load_model, preflight_model
from appliance.training.onnx_export import CHECK_EVENTS as ONNX_CHECK_EVENTS
from appliance.training.onnx_export import TOLERANCE as ONNX_TOLERANCE
from appliance.training.onnx_export import OnnxExport, export_onnx
from appliance.training.trainer import Progress, Trainer
from appliance.training.warm_start import (
    InitModel,
    bundle_predictor,
    old_model_metrics,
    read_init_model,
    start_from,
    warm_spec,
)
from servicecore.errors import BadInputError
from servicecore.naming import check_name
from servicecore.publishing import publish as publish_bundle

log = logging.getLogger(__name__)


def configure_reproducibility(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and ask TensorFlow for deterministic kernels."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    with contextlib.suppress(AttributeError, RuntimeError):
        tf.config.experimental.enable_op_determinism()


def training_device() -> str:
    """The device Keras places the model on: the first visible GPU, else the CPU."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "/device:CPU:0"


def _cache_bound(training: Mapping[str, Any]) -> int:
    """``training.feature_cache_mb`` in bytes (0 turns the cache off)."""
    megabytes = training.get("feature_cache_mb", DEFAULT_FEATURE_CACHE_MB)
    if not isinstance(megabytes, int | float) or isinstance(megabytes, bool) or megabytes < 0:
        raise BadInputError(
            f"params.json: training.feature_cache_mb must be a number >= 0, got {megabytes!r}"
        )
    return int(megabytes * 2**20)


def framework_device(model: Any) -> str:
    """Where the model trains: Keras's device, or the PyTorch module's; estimators train on the CPU."""
    if isinstance(model, TorchModel):
        return str(model.device)
    if isinstance(model, FrameworkModel):
        return "cpu"
    return training_device()


def framework_name(model: Any) -> str:
    return model.framework if isinstance(model, FrameworkModel) else "keras"


def _onnx_metrics(onnx: OnnxExport) -> dict[str, Any]:
    return {
        "servable": onnx.servable,
        "reason": onnx.reason,
        "checked_events": onnx.checked_events,
        "max_abs_diff": onnx.max_abs_diff,
        "tolerance": ONNX_TOLERANCE,
    }


def _target_bytes(stream: EventStream) -> int:
    """Bytes per event the feature cache keeps beside the features: target(s) and weight."""
    target = 4 * stream.n_classes if stream.regression else 8
    return target + (4 if stream.weighted else 0)


def refuse_nonfinite(spec: FeatureSpec) -> None:
    """NaN or infinite raw values would silently become ``nan_value``; a model trained on them is suspect."""
    bad = spec.nonfinite_branches()
    if bad:
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(bad.items()))
        raise BadInputError(
            f"branch(es) with NaN or infinite values: {listed}; exclude them "
            "(exclude_branches) or cut those events (preproc.json)"
        )


def run_training(
    *,
    files: str | Path,
    labels: str | Path,
    model: str | Path,
    params: str | Path | Mapping[str, Any],
    preproc: str | Path | Mapping[str, Any] | None = None,
    specs: str | Path | None = None,
    fout: str | Path,
    publish: str | Path | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    init_model: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``model`` on the workflow and write the bundle to ``fout`` (and publish it when asked).

    With ``init_model`` (a bundle directory) the model starts from that bundle's weights and keeps its input
    transform (``appliance.training.warm_start``); the test metrics then hold the old model's beside the new
    one's (``init_model_auc`` ...). Returns ``{"bundle", "published", "name", "version", "metrics"}``.

    Under ``TF_CONFIG`` naming several workers, this process is one task of a multi-worker training
    (``appliance.training.distributed``): task 0 returns as above; the others train their share and return
    ``{"bundle": None, "task": i, ...}`` without writing anything.
    """
    report = progress or (lambda event: None)
    started = time.monotonic()
    cluster = cluster_from_env()
    strategy = create_strategy() if cluster is not None else None  # before any other TensorFlow op
    fout = Path(fout).absolute()
    check_output_directory(fout)
    model_name = check_name(name or fout.name)
    repository = Path(publish).absolute() if publish else None
    if repository is not None and repository.exists() and not repository.is_dir():
        raise BadInputError(f"model repository {str(repository)!r} is not a directory")

    wf = load_workflow(files, labels, params, preproc, specs)
    preflight_model(model)
    init = read_init_model(init_model) if init_model is not None else None
    cache_bound = _cache_bound(wf.params.training)
    report({"stage": "specs", "files": len(wf.files), "time": now()})
    spec = load_or_compute_specs(wf)
    refuse_nonfinite(spec)
    if init is not None:
        raw_params = params if isinstance(params, Mapping) else json.loads(Path(params).read_text())
        spec = warm_spec(init, spec, raw_params)
    stream = EventStream(wf, spec, share=cluster.share if cluster is not None else None)
    report(
        {
            "stage": "specs",
            "events": stream.total_events,
            "features": spec.dim,
            "classes": stream.class_names,
            "time": now(),
        }
    )

    configure_reproducibility(wf.params.seed)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        user_model, encoding = load_model(
            model,
            spec.dim,
            stream.n_classes,
            options=wf.params.training,
            batch_size=wf.params.batch_size,
            seed=wf.params.seed,
            regression=stream.regression,
        )
    if cluster is not None:
        refuse_framework(framework_name(user_model), cluster.tasks)
        if init is not None:
            raise BadInputError(f"init_model cannot be used with {cluster.tasks} workers; ask for one worker")
    start_difference = start_from(user_model, init) if init is not None else None
    device = framework_device(user_model)
    train_share = (1.0 - wf.params.split) * (1.0 - wf.params.validation_split)
    if isinstance(user_model, FrameworkModel):
        user_model.check_stream(int(stream.total_events * train_share))
    class_weights = stream.class_weights() if wf.params.class_weight == "balanced" else None
    parameters = user_model.count_params()
    log.info("training %s parameters on %s", parameters, device)
    report(
        {
            "stage": "train",
            "epoch": 0,
            "epochs": wf.params.epochs,
            "device": device,
            "framework": framework_name(user_model),
            "parameters": parameters,
            "time": now(),
        }
    )

    fout.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".mlaas4hep-holdout-", dir=fout.parent))
    try:
        cache = FeatureCache(workdir, spec.dim, cache_bound, wf.params.seed, _target_bytes(stream))
        if wf.params.epochs > 1:
            cache.plan(int(stream.total_events * stream.share_fraction * train_share))
        trainer = Trainer(
            stream,
            user_model,
            encoding,
            workdir,
            class_weights,
            report,
            cache,
            cache_bound,
            cluster,
            strategy,
        )
        history = trainer.fit()
        if cluster is not None and not cluster.chief:
            result = {
                "bundle": None,
                "published": None,
                "name": model_name,
                "version": None,
                "task": cluster.index,
            }
            report({"stage": "done", **result, "time": now()})
            return result
        report({"stage": "evaluate", "events": trainer.test.events, "time": now()})
        test, plots = trainer.evaluate()
        if init is not None and not stream.regression:
            test |= _init_model_metrics(init, trainer, encoding.probabilities, stream.class_names)
        onnx = None
        if isinstance(user_model, FrameworkModel):
            onnx = export_onnx(user_model, spec.dim, trainer.test_features(ONNX_CHECK_EVENTS))
            if not onnx.servable:
                log.warning("the model is published but not servable: %s", onnx.reason)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    metrics = _metrics_document(
        wf, spec, stream, trainer, test, device, user_model, class_weights, time.monotonic() - started
    )
    if onnx is not None:
        metrics["onnx"] = _onnx_metrics(onnx)
    if cluster is not None:
        metrics["distributed"] = describe(
            cluster, trainer.task_counts, trainer.steps or 0, wf.params.batch_size
        )
    if init is not None:
        metrics["init_model"] = {
            "name": init.name,
            "version": init.version,
            "framework": init.framework,
            "start_max_abs_diff": start_difference,
        }
    bundle = write_bundle(
        fout,
        model=trainer.model,  # a multi-worker chief's plain copy of the trained model
        onnx=onnx,
        name=model_name,
        features=spec.to_dict(),
        class_names=stream.class_names,
        metrics=metrics,
        history=history,
        roc=None if stream.regression else plots,
        residuals=plots if stream.regression else None,
    )
    published, version = None, None
    if repository is not None:
        report({"stage": "publish", "repository": str(repository), "name": model_name, "time": now()})
        published_path, version = publish_bundle(bundle, repository, model_name)
        published = str(published_path)
    result = {
        "bundle": str(bundle),
        "published": published,
        "name": model_name,
        "version": version,
        "metrics": test,
    }
    report({"stage": "done", **result, "time": now()})
    return result


def _init_model_metrics(
    init: InitModel, trainer: Trainer, probabilities: Any, class_names: list[str]
) -> dict[str, Any]:
    """``init_model_<metric>``: the old model on the same new test events as the new one."""
    predict = bundle_predictor(init)
    if predict is None:
        return {"init_model_note": f"init_model {init.label} is not servable: not compared"}
    old = old_model_metrics(predict, trainer.test.arrays(), trainer.test.labels(), probabilities, class_names)
    return {f"init_model_{key}": value for key, value in old.items() if key != "events"}


def _metrics_document(
    wf: Workflow,
    spec: FeatureSpec,
    stream: EventStream,
    trainer: Trainer,
    test: dict[str, Any],
    device: str,
    model: Any,
    class_weights: dict[int, float] | None,
    seconds: float,
) -> dict[str, Any]:
    last = trainer.history[-1] if trainer.history else {}
    return {
        "test": test,
        "validation": {k[4:]: v for k, v in last.items() if k.startswith("val_")},
        "history": trainer.history,
        "classes": stream.class_names,
        "events": {
            "total": stream.total_events,
            "validation": trainer.validation.events,
            "test": trainer.test.events,
            "validation_sample": trainer.validation.sampling(),
            "test_sample": trainer.test.sampling(),
            "train": trainer.history[0]["events_trained"] if trainer.history else 0,
            "read": trainer.events_read,
        },
        "features": spec.dim,
        "parameters": model.count_params(),
        "framework": framework_name(model),
        "sample": getattr(model, "sample_note", None),
        "feature_cache": trainer.cache.note if trainer.cache is not None else None,
        "device": device,
        "seed": wf.params.seed,
        "epochs": wf.params.epochs,
        "batch_size": wf.params.batch_size,
        "class_weight": class_weights,
        "task": "regression" if stream.regression else "classification",
        "targets": list(wf.params.target),
        "weights": spec.dataset.get("weights"),
        "seconds": round(seconds, 3),
        "finished": now(),
    }
