"""Request and response models of the guardrail's loop: how a served model is doing
without labels (the monitor of its recorded answers), and the review queue (assist
answers labelled by people, exported as a dataset the next run trains on)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from trainers.schema import StrictModel


class DecisionRate(BaseModel):
    count: int = Field(description="Answers with this decision in the window.")
    rate: float | None = Field(description="Their share of the window's answers (null: no answers).")
    low: float = Field(description="Lower end of the rate's 95% Wilson interval.")
    high: float = Field(description="Upper end of the rate's 95% Wilson interval.")
    promised: float = Field(description="The rate the policy gave on val_test.")
    off: bool = Field(description="Whether the promised rate lies outside the live rate's interval.")


class DecisionMix(BaseModel):
    accept: DecisionRate = Field(description="Accepted answers.")
    assist: DecisionRate = Field(description="Answers sent to a person (the assist band).")
    abstain: DecisionRate = Field(description="Answers the policy refused.")


class ConfidenceHistogram(BaseModel):
    edges: list[float] = Field(description="Bin edges of calibrated confidence (the calibration views' bins).")
    live: list[int] = Field(description="Live answers per bin.")
    reference: list[int] = Field(description="val_calib rows per bin.")
    mean: float | None = Field(description="Mean live confidence (null: no answers).")


class Drift(BaseModel):
    psi: float = Field(description="Population stability index of live confidences against val_calib's.")
    ks: float = Field(description="Two-sample Kolmogorov-Smirnov statistic at the bin edges.")
    ks_p_value: float = Field(description="Its asymptotic p-value.")
    prediction_psi: float = Field(description="PSI of the live predicted classes against val_test's predictions.")
    chi2_p_value: float = Field(description="The chi-square test's p-value of the live predicted classes.")
    psi_threshold: float = Field(description="PSI above which (with its test rejecting) a signal flags drift.")
    p_threshold: float = Field(description="The tests' significance level.")
    by_confidence: bool = Field(description="Whether the confidences flag drift.")
    by_prediction: bool = Field(description="Whether the predicted classes flag drift.")
    flagged: bool = Field(description="Whether the window has drifted from the data the model was checked on.")


class PredictedClasses(BaseModel):
    live: list[int] = Field(description="Live answers per predicted class (label id order).")
    reference: list[int] = Field(description="val_test predictions per class.")


class AccuracyEstimate(BaseModel):
    n: int = Field(description="Accepted answers it is estimated from.")
    estimate: float | None = Field(description="Mean calibrated confidence of the accepted answers.")
    low: float | None = Field(description="Lower end: sampling spread (95%) plus val_calib's ECE after temperature.")
    high: float | None = Field(description="Upper end, likewise.")


class MeasuredAccuracy(BaseModel):
    n: int = Field(description="Reviewed answers in the window.")
    accuracy: float = Field(description="Share of them the model got right, by the reviewers' labels.")
    low: float = Field(description="Lower end of its 95% Wilson interval.")
    high: float = Field(description="Upper end.")


class AuditedAccuracy(MeasuredAccuracy):
    contradicts_estimate: bool = Field(
        description="The audit's interval and the estimate's do not meet: the confidences no longer tell how "
        "often accepted answers are right (typically inputs unlike the calibration data, confidently misread).")


class RequestLatency(BaseModel):
    requests: int = Field(description="Requests with a recorded latency in the window.")
    p50: float | None = Field(description="Median time a replica took to answer a request, in ms.")
    p95: float | None = Field(description="95th percentile, in ms.")
    p99: float | None = Field(description="99th percentile, in ms.")


class MonitorWindow(BaseModel):
    run: str = Field(description="The run whose bundle answered.")
    model_version: str | None = Field(description="The model version the window is about (null: none answered).")
    versions: list[str] = Field(description="Every model version of this run with recorded answers.")
    until: float = Field(description="End of the window (unix seconds).")
    window_s: float = Field(description="Length of the window in seconds.")
    answers: int = Field(description="Answers recorded in the window.")
    request_rate: float | None = Field(description="Answers per second over the window.")
    latency_ms: RequestLatency = Field(description="How long the replicas took to answer (HTTP in front not included).")
    decisions: DecisionMix = Field(description="The decision mix against the policy's promise.")
    label_names: list[str] = Field(description="Class names in label-id order.")
    confidence: ConfidenceHistogram = Field(description="Live calibrated confidences against val_calib's.")
    predicted: PredictedClasses = Field(description="Live predicted classes against val_test's.")
    drift: Drift = Field(description="Whether live confidences moved away from the calibration data's.")
    estimated_accuracy: AccuracyEstimate = Field(description="Accuracy of the accepted answers, estimated without labels.")
    measured_accuracy: MeasuredAccuracy | None = Field(
        description="Accuracy on reviewed assist and abstain answers (null: none reviewed).")
    audited_accuracy: AuditedAccuracy | None = Field(
        description="Accuracy on the reviewed audit sample of accepted answers: what the estimate estimates, "
        "measured (null: none reviewed).")


# --- the review queue (ray_app.review): the answers sent to a person, and their labels ---


class TopLabel(BaseModel):
    label: str = Field(description="A class name.")
    probability: float = Field(description="Its calibrated probability.")


class ReviewRecord(BaseModel):
    label: str | None = Field(description="The class the reviewer chose (null: skipped).")
    skipped: bool = Field(description="Whether the reviewer skipped the item instead of labelling it.")
    reviewer: str = Field(description="Who reviewed it ('anonymous' when nobody was named).")
    reviewed_at: float = Field(description="When (unix seconds).")


class StoredReview(ReviewRecord):
    id: str = Field(description="The review item's id.")


class ReviewCounts(BaseModel):
    pending: int = Field(description="Items nobody has reviewed yet.")
    labelled: int = Field(description="Items with a label.")
    skipped: int = Field(description="Items a reviewer skipped.")


class ReviewItem(BaseModel):
    id: str = Field(description="The item's id: 16 hex digits of a sha256 of (model version, request id, input index).")
    model_version: str = Field(description="The model version that answered.")
    answered_at: float = Field(description="When it answered (unix seconds).")
    prediction: str = Field(description="The label it predicted.")
    confidence: float = Field(description="Its calibrated confidence in that label.")
    decision: Literal["accept", "assist", "abstain"] = Field(description="The policy's decision (assist or abstain).")
    top_k: list[TopLabel] = Field(description="The most probable classes, most probable first.")
    input_kind: Literal["text", "image", "pixels"] | None = Field(
        description="What input was kept: text, an image file, pixel rows (null: none was kept).")
    review: ReviewRecord | None = Field(description="Its review (null: pending).")


class ReviewQueuePage(BaseModel):
    run: str = Field(description="The run whose served model answered.")
    label_names: list[str] = Field(description="The classes a reviewer chooses from.")
    counts: ReviewCounts = Field(description="Items per status over the whole queue (these decisions and version).")
    total: int = Field(description="Items of the asked status (what limit and offset page through).")
    items: list[ReviewItem] = Field(description="This page of items of the asked status, least confident first.")


class ReviewInput(BaseModel):
    kind: Literal["text", "image", "unreadable"] = Field(description="text, image (a PNG), or unreadable.")
    text: str | None = Field(default=None, description="The text (text inputs).")
    media_type: str | None = Field(default=None, description="image/png (images).")
    image: str | None = Field(default=None, description="Base64 PNG, scaled to about thumbnail_px (images; pixel "
                              "rows are drawn as a greyscale or RGB PNG).")
    original_size: list[int] | None = Field(default=None, description="The image's [width, height] (images).")
    thumbnail_size: list[int] | None = Field(default=None, description="The PNG's [width, height] (images).")
    reason: str | None = Field(default=None, description="Why it cannot be shown (unreadable).")


class ReviewItemDetail(ReviewItem):
    run: str = Field(description="The run.")
    label_names: list[str] = Field(description="The classes a reviewer chooses from.")
    input: ReviewInput | None = Field(description="The input to review (null: none was kept).")


class ReviewSubmission(StrictModel):
    """A label, or a skip: exactly one."""

    label: str | None = Field(default=None, max_length=200, description="One of the run's classes (label_names).")
    skip: bool = Field(default=False, description="Skip the item instead of labelling it.")
    reviewer: str | None = Field(default=None, max_length=100, description="Who reviews (default 'anonymous').")

    @model_validator(mode="after")
    def _label_or_skip(self) -> ReviewSubmission:
        if (self.label is None) == (not self.skip):
            raise ValueError("give either a label or skip: true, not both and not neither")
        return self


class ReviewExport(BaseModel):
    export_id: str = Field(description="The export's id: its UTC time and the start of its sha256.")
    path: str = Field(description="The Parquet file; put it in a later run's data.reviewed.")
    rows: int = Field(description="Labelled items written (skipped ones are not).")
    fingerprint: str = Field(description="sha256 of the file (what a run that uses it records).")
    created: str = Field(description="When it was written (ISO 8601, UTC).")
    columns: list[str] = Field(description="Its columns: the run's source's content column, then its label column.")
    model_versions: list[str] = Field(description="The model versions whose answers were labelled.")
    label_counts: dict[str, int] = Field(description="Rows per class.")
