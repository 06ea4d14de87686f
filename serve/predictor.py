"""What a request means, independent of the web framework: the request / response
schema, turning inputs into model tensors (the training preprocessing, unchanged), the
forward pass, and calibrated answers under a policy.

Work is split in two so a server can batch across callers: `prepare` runs per request
and does only what decides whether the request is answerable (kinds, limits, base64,
image headers, pixel arrays), so a bad request gets its 4xx at once; `logits` runs once
per batch and does the rest — tokenizing every text of the batch in one call, decoding
the images — followed by the forward. Texts are padded to the longest text of their
forward pass rather than to `max_length`, and a batch is sorted by length and cut into
chunks of similar length (`text_chunk_size`), so short texts do not pay for long ones:
with attention masks the logits are the same as under max_length padding.

The Ray Serve app and the naive baseline server of `bench/serve_throughput.py` both use
this, so they differ only in how requests reach the model.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field, model_validator

from calibration.policy import Policy
from serve.bundle import LoadedBundle
from trainers.preprocess import ImageSpec, TextSpec, decode_image, normalize_pixels
from trainers.schema import StrictModel

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class EncodedImage:
    """An image whose base64 and header were checked with its request; it is decoded
    with its batch. `index` is its place in its request, for the error message."""

    content: bytes
    index: int


# One checked input, ready for `logits`: a text, an image still encoded, or pixels
# already normalised to float32 (C, H, W).
ModelInput = str | EncodedImage | np.ndarray


class InputError(ValueError):
    """A request the model cannot answer; `status` is the HTTP code to send."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class PredictInput(StrictModel):

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


class PredictRequest(StrictModel):

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
    """A loaded bundle and what it takes to answer requests with it.

    `device` and `dtype` place the model (a GPU, half precision); inputs follow it.
    `text_chunk_size`: texts per forward pass after sorting a batch by length (None:
    the whole batch in one pass)."""

    def __init__(
        self,
        bundle: LoadedBundle,
        max_image_pixels: int,
        device: str = "cpu",
        dtype: Literal["fp32", "fp16", "bf16"] = "fp32",
        text_chunk_size: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[dtype]
        self.model = bundle.model.to(device=self.device, dtype=self.dtype).eval()
        self.label_names: list[str] = list(bundle.spec["label_names"])
        self.max_image_pixels = max_image_pixels
        self.text_chunk_size = text_chunk_size
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

    # --- per request: is it answerable? -------------------------------------------------

    def prepare(self, request: PredictRequest, max_inputs: int) -> list[ModelInput]:
        """Every input checked, or an InputError naming the first bad one. Cheap on
        purpose (no tokenizing, no image decoding): it runs once per request."""
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
            return [str(item.text) for item in request.inputs]
        return [
            self._check_image(item.image, index) if item.image is not None else self._pixels(item.pixels, index)
            for index, item in enumerate(request.inputs)
        ]

    def _check_image(self, encoded: str, index: int) -> EncodedImage:
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
        return EncodedImage(content, index)

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

    # --- per batch: preprocessing and the forward -----------------------------------------

    def logits(self, inputs: list[ModelInput]) -> np.ndarray:
        """The float32 [N, C] logits of `inputs`, in order; an InputError for the first
        image that does not decode."""
        results = self.logits_or_errors(inputs)
        for result in results:
            if isinstance(result, InputError):
                raise result
        return np.stack(results)  # type: ignore[arg-type]

    @torch.inference_mode()
    def logits_or_errors(self, inputs: list[ModelInput]) -> list[np.ndarray | InputError]:
        """One result per input, in order: its float32 logits, or the InputError of an
        image that passed its header check but does not decode (a truncated file). The
        other inputs of the batch are answered all the same."""
        if self.kind == "text":
            return list(self._text_logits([str(x) for x in inputs]))
        results: list[np.ndarray | InputError] = []
        for item in inputs:
            results.append(self._decode(item) if isinstance(item, EncodedImage) else np.asarray(item))
        good = [i for i, r in enumerate(results) if not isinstance(r, InputError)]
        if good:
            pixels = torch.from_numpy(np.stack([results[i] for i in good]))  # type: ignore[misc]
            logits = self.forward(pixel_values=pixels)
            for row, i in zip(logits, good, strict=True):
                results[i] = row
        return results

    def _decode(self, image: EncodedImage) -> np.ndarray | InputError:
        try:
            return decode_image(image.content, self.image_spec)
        except (OSError, ValueError) as exc:
            return InputError(f"inputs[{image.index}].image could not be decoded ({exc})")

    def tokenize(self, texts: list[str]) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """The forward passes for `texts`: sorted by token count, cut into chunks of
        `text_chunk_size`, each padded to its own longest text (to max_length for a
        left-padding tokenizer). Each chunk comes with the
        positions of its texts in `texts`, so the logits go back in input order."""
        ids: list[list[int]] = self.tokenizer(
            texts, truncation=True, max_length=self.text_spec.max_length, padding=False
        )["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        size = self.text_chunk_size or len(order)
        pad_id = self.tokenizer.pad_token_id or 0
        left = self.tokenizer.padding_side == "left"
        chunks = []
        for start in range(0, len(order), size):
            members = order[start:start + size]
            # Left padding moves a text's tokens to later positions the more it is
            # padded, and models with absolute position embeddings see that: such
            # tokenizers keep training's max_length padding so the logits stay the same.
            longest = self.text_spec.max_length if left else max(len(ids[i]) for i in members)
            input_ids = np.full((len(members), longest), pad_id, dtype=np.int64)
            mask = np.zeros((len(members), longest), dtype=np.int64)
            for row, i in enumerate(members):
                n = len(ids[i])
                where = slice(longest - n, longest) if left else slice(0, n)
                input_ids[row, where] = ids[i]
                mask[row, where] = 1
            chunks.append((np.asarray(members), {"input_ids": torch.from_numpy(input_ids),
                                                 "attention_mask": torch.from_numpy(mask)}))
        return chunks

    def _text_logits(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), len(self.label_names)), dtype=np.float32)
        for rows, inputs in self.tokenize(texts):
            out[rows] = self.forward(**inputs)
        return out

    def forward(self, **inputs: torch.Tensor) -> np.ndarray:
        """The model on tensors already batched (`tokenize`'s chunks, stacked pixels):
        moved to the model's device and float dtype, float32 logits back on the CPU."""
        moved = {
            key: value.to(self.device, dtype=self.dtype if value.is_floating_point() else None, non_blocking=True)
            for key, value in inputs.items()
        }
        return self.model(**moved).float().cpu().numpy()

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
