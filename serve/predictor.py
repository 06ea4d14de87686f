"""What a request means, independent of the web framework: the request / response
schema, turning inputs into model tensors (the training preprocessing, unchanged), the
forward pass, and calibrated answers under a policy.

The Ray Serve app and the naive baseline server of `bench/serve_throughput.py` both use
this, so they differ only in how requests reach the model.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from calibration.policy import Policy
from serve.bundle import LoadedBundle
from trainers.preprocess import ImageSpec, TextSpec, decode_image, model_inputs, normalize_pixels

# One input's model tensors, keyed like Classifier.forward's arguments.
ModelInput = dict[str, np.ndarray]


class InputError(ValueError):
    """A request the model cannot answer; `status` is the HTTP code to send."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class PredictInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(
        default=None,
        description="Base64 of an encoded image (PNG, JPEG, or any format Pillow reads; a "
        "data: URL prefix is allowed). Resized and normalised exactly as in training.",
    )
    pixels: list[list[float]] | list[list[list[float]]] | None = Field(
        default=None,
        description="Raw pixel values 0..255 as rows: (H, W) for one channel or (H, W, C); "
        "H and W must equal the model's image size (see GET /metadata).",
    )
    text: str | None = Field(default=None, description="Text, for text models.")

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictInput:
        given = [name for name in ("image", "pixels", "text") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"each input needs exactly one of image, pixels or text (got {given or 'none'})")
        return self


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[PredictInput] = Field(min_length=1, description="The batch to classify (at least one).")
    top_k: int | None = Field(default=None, ge=1, description="Probabilities returned per input (default: the server's).")


class LabelProbability(BaseModel):
    label: str
    label_id: int
    probability: float = Field(description="Calibrated (temperature-scaled) probability.")


class Prediction(BaseModel):
    label: str = Field(description="Predicted class name.")
    label_id: int = Field(description="Predicted class index.")
    confidence: float = Field(description="Calibrated probability of the predicted class.")
    decision: Literal["accept", "assist", "abstain"] = Field(description="The policy's decision on this confidence.")
    top_k: list[LabelProbability] = Field(description="Most probable classes, highest first.")


class PredictResponse(BaseModel):
    model_version: str = Field(description="run@sha256-prefix of the served weights.")
    predictions: list[Prediction] = Field(description="One per input, in request order.")


class BundlePredictor:
    """A loaded bundle and what it takes to answer requests with it."""

    def __init__(self, bundle: LoadedBundle, max_image_pixels: int, device: str = "cpu") -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device).eval()
        self.label_names: list[str] = list(bundle.spec["label_names"])
        self.max_image_pixels = max_image_pixels
        preprocessing = dict(bundle.spec["preprocessing"])
        kind = preprocessing.pop("kind")
        self.kind: Literal["image", "text"] = kind
        if kind == "image":
            self.image_spec = ImageSpec(
                image_size=int(preprocessing["image_size"]),
                num_channels=int(preprocessing["num_channels"]),
                mean=tuple(preprocessing["mean"]),
                std=tuple(preprocessing["std"]),
            )
        else:
            from transformers import AutoTokenizer

            self.text_spec = TextSpec(**preprocessing)
            self.tokenizer = AutoTokenizer.from_pretrained(self.text_spec.tokenizer)

    def input_description(self) -> dict[str, Any]:
        if self.kind == "image":
            spec = self.image_spec
            return {"kind": "image", "accepts": ["image", "pixels"], "image_size": spec.image_size,
                    "num_channels": spec.num_channels, "mean": list(spec.mean), "std": list(spec.std),
                    # Applied inside the model (classifier.json): a client sends one image.
                    "views": list(self.model.views), "view_crop_fraction": self.model.view_crop_fraction}
        return {"kind": "text", "accepts": ["text"], "max_length": self.text_spec.max_length}

    # --- inputs -> tensors ------------------------------------------------------------

    def prepare(self, request: PredictRequest, max_inputs: int) -> list[ModelInput]:
        """Every input checked and preprocessed, or an InputError naming the first bad one."""
        if len(request.inputs) > max_inputs:
            raise InputError(
                f"the batch has {len(request.inputs)} inputs, over the limit of {max_inputs} "
                "per request; split it into several requests"
            )
        for index, item in enumerate(request.inputs):
            given = "text" if item.text is not None else "image" if item.image is not None else "pixels"
            if self.kind == "image" and given == "text":
                raise InputError(f"inputs[{index}] is text, but this model classifies images: send image (base64) or pixels")
            if self.kind == "text" and given != "text":
                raise InputError(f"inputs[{index}] is {given}, but this model classifies text: send text")
        if self.kind == "text":
            return self._prepare_texts([str(item.text) for item in request.inputs])
        return [
            {"pixel_values": self._decode(item.image, index) if item.image is not None
             else self._pixels(item.pixels, index)}
            for index, item in enumerate(request.inputs)
        ]

    def _decode(self, encoded: str, index: int) -> np.ndarray:
        if encoded.startswith("data:") and "," in encoded:
            encoded = encoded.split(",", 1)[1]
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"inputs[{index}].image is not valid base64") from None
        try:
            with Image.open(io.BytesIO(content)) as image:
                width, height = image.size  # header only: nothing decoded yet
        except (OSError, Image.DecompressionBombError):
            raise InputError(f"inputs[{index}].image is base64 but not an image Pillow can decode (PNG or JPEG)") from None
        if width * height > self.max_image_pixels:
            raise InputError(
                f"inputs[{index}].image is {width}x{height}, over the limit of {self.max_image_pixels} pixels; "
                "downscale it before sending", status=413
            )
        try:
            return decode_image(content, self.image_spec)
        except (OSError, ValueError) as exc:
            raise InputError(f"inputs[{index}].image could not be decoded ({exc})") from None

    def _pixels(self, rows: Any, index: int) -> np.ndarray:
        spec = self.image_spec
        try:
            pixels = np.asarray(rows, dtype=np.float64)
        except ValueError:
            raise InputError(f"inputs[{index}].pixels is ragged: every row needs the same length") from None
        side = spec.image_size
        expected = [(side, side, spec.num_channels)] + ([(side, side)] if spec.num_channels == 1 else [])
        if pixels.shape not in expected:
            wanted = " or ".join("x".join(map(str, shape)) for shape in expected)
            raise InputError(
                f"inputs[{index}].pixels has shape {'x'.join(map(str, pixels.shape))}; this model takes "
                f"{wanted} (height x width{' x channels' if spec.num_channels > 1 else ''}), values 0..255"
            )
        if not np.isfinite(pixels).all():
            raise InputError(f"inputs[{index}].pixels contains NaN or infinity")
        if pixels.min() < 0 or pixels.max() > 255:
            raise InputError(
                f"inputs[{index}].pixels has values in [{pixels.min():g}, {pixels.max():g}]; expected 0..255"
            )
        return normalize_pixels(pixels, spec)

    def _prepare_texts(self, texts: list[str]) -> list[ModelInput]:
        encoded = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.text_spec.max_length, return_tensors="np"
        )
        ids, mask = encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
        return [{"input_ids": ids[i], "attention_mask": mask[i]} for i in range(len(texts))]

    # --- forward and answers ------------------------------------------------------------

    @torch.no_grad()
    def logits(self, inputs: list[ModelInput]) -> np.ndarray:
        """One forward over all `inputs` (stacked): float32 [N, C]."""
        stacked = {key: torch.as_tensor(np.stack([x[key] for x in inputs])).to(self.device) for key in inputs[0]}
        return self.model(**model_inputs(stacked)).float().cpu().numpy()

    def answer(self, logits: np.ndarray, policy: Policy, top_k: int) -> list[Prediction]:
        probabilities = policy.calibrated(logits)
        confidence = probabilities.max(axis=1)
        decisions = policy.decide(confidence)
        k = min(top_k, probabilities.shape[1])
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            Prediction(
                label=self.label_names[int(order[0])],
                label_id=int(order[0]),
                confidence=float(confidence[i]),
                decision=str(decisions[i]),  # type: ignore[arg-type]
                top_k=[
                    LabelProbability(label=self.label_names[int(c)], label_id=int(c), probability=float(probabilities[i, c]))
                    for c in order
                ],
            )
            for i, order in enumerate(ranked)
        ]
