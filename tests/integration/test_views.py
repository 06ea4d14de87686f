"""`model.views` is one definition: validation (trainers.train_loop.evaluate on the model
the training builds), the exported logits (Ray Data batch inference on the saved
classifier) and serving (BundlePredictor on the exported bundle) give the same
multi-view logits for the same images. No training run: a seeded tiny ViT suffices."""

from __future__ import annotations

import base64
import copy
import io
from pathlib import Path

import numpy as np
import pytest
import ray.data
import torch
import torch.nn.functional as F
from PIL import Image

from calibration.policy import Policy
from serve.bundle import export_bundle, load_bundle
from serve.predictor import BundlePredictor, PredictInput, PredictRequest
from tests.helpers.models import model_cfg
from tests.helpers.references import predict_logits
from trainers.model import build_classifier, save_classifier
from trainers.preprocess import ImageSpec, model_inputs, preprocess_dataset, preprocess_image_batch
from trainers.train_loop import ValidationCache, evaluate

pytestmark = pytest.mark.usefixtures("ray_local")

VIEWS = ["identity", "hflip", "center_crop", "bottom_left"]
SPEC = ImageSpec(8, 1, (0.5,), (0.5,))
ROWS_PER_SPLIT = 6


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def split_rows(first_label: int) -> list[dict]:
    """8x8 grey images; every row has its own label, so rows can be matched by label
    whatever order Ray Data returns them in."""
    rng = np.random.default_rng(first_label)
    return [
        {"image": png(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)), "label_id": first_label + i}
        for i in range(ROWS_PER_SPLIT)
    ]


def by_label(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return logits[np.argsort(labels)]


def test_validation_export_and_serving_use_the_same_views(tmp_path: Path) -> None:
    cfg = model_cfg(views=VIEWS, view_crop_fraction=0.75)
    num_labels = 2 * ROWS_PER_SPLIT
    torch.manual_seed(0)
    model = build_classifier(cfg, num_labels).eval()  # as the training loop builds it
    plain = copy.deepcopy(model)
    plain.views = ("identity",)
    save_classifier(model, cfg, [f"c{i}" for i in range(num_labels)], tmp_path / "model",
                    extra={"preprocessing": SPEC.to_dict()})
    rows = {"val_calib": split_rows(0), "val_test": split_rows(ROWS_PER_SPLIT)}

    # export: Ray Data batch inference on the saved classifier (batches of 4 cross splits)
    exported = predict_logits({s: ray.data.from_items(r) for s, r in rows.items()}, SPEC, tmp_path / "model", 4)

    for split, split_rows_ in rows.items():
        logits, labels = exported[split]
        assert sorted(labels.tolist()) == [r["label_id"] for r in split_rows_]
        preprocessed = preprocess_image_batch(
            {"image": np.array([r["image"] for r in split_rows_], dtype=object),
             "label_id": np.array([r["label_id"] for r in split_rows_])}, SPEC)
        pixels = model_inputs({"pixel_values": torch.as_tensor(preprocessed["pixel_values"])}, SPEC)["pixel_values"]
        with torch.no_grad():
            direct = model(pixel_values=pixels).numpy()
            single = plain(pixel_values=pixels).numpy()
        np.testing.assert_allclose(by_label(logits, labels), direct, rtol=1e-5, atol=1e-5)
        assert np.abs(direct - single).max() > 1e-3  # the views changed the logits

    # validation: evaluate() on the training-built model gives the exported logits' loss
    dataset = preprocess_dataset(ray.data.from_items(rows["val_calib"] + rows["val_test"]), SPEC).materialize()
    logits = np.concatenate([exported[s][0] for s in rows])
    labels = np.concatenate([exported[s][1] for s in rows])
    cpu = torch.device("cpu")
    metrics = evaluate(model, ValidationCache(0).batches(dataset, 4, cpu), cpu, None, spec=SPEC)
    expected_loss = float(F.cross_entropy(torch.as_tensor(logits), torch.as_tensor(labels)))
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    assert abs(evaluate(plain, ValidationCache(0).batches(dataset, 4, cpu), cpu, None, spec=SPEC)["loss"]
               - expected_loss) > 1e-4

    # serving: the exported bundle answers base64 images and raw pixels with the same logits
    bundle = load_bundle(export_bundle(tmp_path / "model", Policy(rule="none"), tmp_path / "bundle", {"run": "views"}))
    predictor = BundlePredictor(bundle, max_image_pixels=10**6)
    assert predictor.input_description()["views"] == VIEWS
    images = rows["val_test"]
    request = PredictRequest(inputs=[PredictInput(image=base64.b64encode(r["image"]).decode()) for r in images])
    served = predictor.logits(predictor.prepare(request, len(images)))
    raw = [np.asarray(Image.open(io.BytesIO(r["image"])), dtype=np.float64).tolist() for r in images]
    served_pixels = predictor.logits(predictor.prepare(PredictRequest(inputs=[PredictInput(pixels=p) for p in raw]),
                                                       len(images)))
    logits, labels = exported["val_test"]
    np.testing.assert_allclose(served, by_label(logits, labels), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served_pixels, served, rtol=1e-6, atol=1e-6)
