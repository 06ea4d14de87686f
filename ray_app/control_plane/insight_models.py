"""Response models of the insights routes: the meaning map, one example, the storyboard,
the calibration views, the insights summary, and the compute budget of a config.

Documents the pipeline writes with sorted keys (storyboard, insights summary,
calibration views, budget) declare their fields alphabetically, so the JSON a route
returns keeps the order of the file it read (see `ray_app.control_plane.models`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ExampleId = Annotated[str, Field(description="The val_test example's id (stable for the same row).")]
ClassLabel = Annotated[str, Field(description="Its true class name.")]
Prediction = Annotated[str, Field(description="The class the model predicted.")]
Confidence = Annotated[float, Field(description="The calibrated confidence of the prediction.")]
Decision = Annotated[str, Field(description="The policy's decision on it: accept, assist or abstain.")]
Correct = Annotated[bool, Field(description="Whether the prediction is right.")]


class OutcomeRow(BaseModel):
    """What the run's model did with one val_test row."""

    id: ExampleId
    label: ClassLabel
    prediction: Prediction
    confidence: Confidence
    decision: Decision
    correct: Correct


class MeaningMapPoint(OutcomeRow):
    x: float = Field(description="First coordinate on the map.")
    y: float = Field(description="Second coordinate on the map.")
    color: str | bool | None = Field(
        default=None, description="The value of the field asked for as `color` (only when one was asked for)."
    )


class MeaningMapRows(BaseModel):
    total: int = Field(description="Rows in val_test.")
    shown: int = Field(description="Rows on the map.")
    max_points: int = Field(description="The most rows a map shows.")
    sampled: bool = Field(description="Whether the map shows a seeded sample rather than every row.")


class MeaningMap(BaseModel):
    """val_test in the model's feature space, in 2-D. A projection method's own
    diagnostics (PCA's explained variance, t-SNE's KL divergence) come as extra keys."""

    model_config = ConfigDict(extra="allow")

    run: str = Field(description="Run name.")
    split: str = Field(description="Always val_test.")
    method: str = Field(description="The projection: pca or tsne.")
    params: dict[str, Any] = Field(description="The method's parameters, defaults filled in.")
    seed: int = Field(description="The row sample's and the projection's seed.")
    key: str = Field(description="The projection's cache key (model, rows, method, parameters, seed).")
    cached: bool = Field(description="Whether the projection came from the run's cache.")
    seconds: float = Field(description="How long computing the projection took.")
    model_sha256: str = Field(description="The hash of the model weights the features come from.")
    feature_dim: int = Field(description="The dimension of the features projected.")
    rows: MeaningMapRows = Field(description="How many rows there are and how many are shown.")
    label_names: list[str] = Field(description="The class names, by label id.")
    rule: str = Field(description="The policy's rule behind each point's decision.")
    color: str | None = Field(description="The field the points are coloured by, if one was asked for.")
    explained_variance_ratio: list[float] | None = Field(
        default=None, description="PCA: the share of the variance each of the two axes explains."
    )
    kl_divergence: float | None = Field(default=None, description="t-SNE: the embedding's final KL divergence.")
    points: list[MeaningMapPoint] = Field(description="One point per row shown, by id.")


class ExampleDetail(BaseModel):
    """One val_test example and the model's outcome on it: `image` (with its media type
    and sizes) for an image dataset, `text` for a text one."""

    run: str = Field(description="Run name.")
    split: str = Field(description="Always val_test.")
    id: ExampleId
    label: ClassLabel
    prediction: Prediction
    confidence: Confidence
    decision: Decision
    correct: Correct
    source: str = Field(description="Where the row came from (the split's `ref`, e.g. a file path).")
    kind: Literal["image", "text"] = Field(description="image or text.")
    image: str | None = Field(default=None, description="The image as a base64 PNG thumbnail (images only).")
    media_type: str | None = Field(default=None, description="The thumbnail's media type, image/png (images only).")
    original_size: list[int] | None = Field(default=None, description="The image's [width, height] (images only).")
    thumbnail_size: list[int] | None = Field(default=None, description="The thumbnail's [width, height] (images only).")
    text: str | None = Field(default=None, description="The example's text (texts only).")


class StoryExample(BaseModel):
    """A storyboard example (the fields of OutcomeRow, in the storyboard file's order)."""

    confidence: Confidence
    correct: Correct
    decision: Decision
    id: ExampleId
    label: ClassLabel
    prediction: Prediction


class StoryCategory(BaseModel):
    available: bool = Field(description="Whether the policy's rule can produce this outcome at all.")
    count: int = Field(description="val_test rows with this outcome.")
    description: str = Field(description="What the category holds, and the order of its examples.")
    examples: list[StoryExample] = Field(description="The examples shown, in that order.")
    reason: str | None = Field(description="Why the rule cannot produce it, when it cannot.")


class ConfusionDirection(BaseModel):
    count: int = Field(description="Rows of this true class predicted as the other.")
    label: str = Field(description="The true class.")
    prediction: str = Field(description="The class predicted.")


class ConfusedPair(BaseModel):
    classes: list[str] = Field(description="The two classes the model mixes up.")
    count: int = Field(description="Confusions between them, both directions together.")
    directions: list[ConfusionDirection] = Field(description="The confusions of each direction.")
    examples: list[StoryExample] = Field(description="Examples of either direction, most confident first.")


class Storyboard(BaseModel):
    categories: dict[str, StoryCategory] = Field(
        description="Examples per outcome: confident_right, confident_wrong, assist, abstain."
    )
    confused_pairs: list[ConfusedPair] = Field(description="The class pairs confused most, most confusions first.")
    label_names: list[str] = Field(description="The class names, by label id.")
    model_sha256: str = Field(description="The hash of the model weights the outcomes come from.")
    n: int = Field(description="Rows in val_test.")
    rule: str = Field(description="The policy's rule.")
    split: str = Field(description="Always val_test.")


class ReliabilityBin(BaseModel):
    accuracy: float | None = Field(description="Accuracy of the bin's samples; null when it has none.")
    confidence: float | None = Field(description="Their mean confidence; null when it has none.")
    count: int = Field(description="Samples in the bin.")
    high: float = Field(description="The bin's upper confidence edge.")
    low: float = Field(description="The bin's lower confidence edge.")
    small: bool = Field(description="Whether it holds too few samples for its accuracy to mean much.")


class ReliabilityPanel(BaseModel):
    bins: list[ReliabilityBin] = Field(description="Every equal-width confidence bin, empty ones included.")
    n: int = Field(description="Samples.")


class ReliabilityViews(BaseModel):
    after: ReliabilityPanel = Field(description="With the fitted temperature.")
    before: ReliabilityPanel = Field(description="At temperature 1.")


class DecisionHistogram(BaseModel):
    counts: dict[str, list[int]] = Field(description="Per decision the rule can make, the samples in each bin.")
    cuts: dict[str, float] = Field(description="The confidences where the decision changes (assist_from, accept_from).")
    edges: list[float] = Field(description="The bins' edges, from 0 to 1.")
    rule: str = Field(description="The policy's rule.")
    totals: dict[str, int] = Field(description="Samples per decision.")


class OperatingPoint(BaseModel):
    accepted: int = Field(description="Samples the policy accepts.")
    coverage: float = Field(description="The share it accepts.")
    rule: str = Field(description="The policy's rule.")
    selective_risk: float | None = Field(description="The error rate among what it accepts; null when it accepts nothing.")


class RiskCurvePoint(BaseModel):
    coverage: float = Field(description="The share accepted at this threshold.")
    selective_risk: float | None = Field(description="The error rate among them; null when none is accepted.")
    threshold: float = Field(description="The confidence threshold.")


class RulePoint(BaseModel):
    coverage: float = Field(description="The share the rule accepts.")
    selective_risk: float | None = Field(description="The error rate among what it accepts.")


class RiskCoverage(BaseModel):
    chosen: OperatingPoint = Field(description="The policy's own operating point.")
    curve: list[RiskCurvePoint] = Field(description="Selective risk against coverage over every candidate threshold.")
    rules: dict[str, RulePoint] = Field(description="Each calibration rule's operating point, by rule.")


class GuardrailCell(BaseModel):
    accepted_accuracy: float | None = Field(description="Accuracy of what the band accepts; null when it accepts nothing.")
    assist_rate: float = Field(description="The share sent to a person.")
    chosen: bool = Field(description="Whether this is the band the sweep chose.")
    coverage: float = Field(description="The share accepted.")
    feasible: bool = Field(description="Whether the band meets the sweep's coverage and assist limits.")


class GuardrailBand(BaseModel):
    center: float = Field(description="The band's center.")
    width: float = Field(description="The band's width.")


class GuardrailHeatmap(BaseModel):
    cells: list[list[GuardrailCell | None]] = Field(
        description="cells[i][j] is the band centers[i], widths[j]; null where the sweep did not try it."
    )
    centers: list[float] = Field(description="The centers tried.")
    chosen: GuardrailBand | None = Field(description="The band the sweep chose; null when none was feasible.")
    chosen_is_policy: bool = Field(description="Whether the run's policy uses that band.")
    widths: list[float] = Field(description="The widths tried.")


class CalibrationViews(BaseModel):
    """The calibration on val_calib as data to draw (calibration/views.json)."""

    run: str = Field(description="Run name.")
    decision_histogram: DecisionHistogram = Field(
        description="Calibrated confidence per decision, with the rule's cut points."
    )
    guardrail: GuardrailHeatmap | None = Field(
        description="The guardrail sweep's heat map; null when the sweep did not run."
    )
    min_bin_count: int = Field(description="Bins with fewer samples are flagged small.")
    n: int = Field(description="Samples in val_calib.")
    reliability: ReliabilityViews = Field(description="The reliability diagram before and after temperature scaling.")
    risk_coverage: RiskCoverage = Field(description="The risk-coverage curve and the rules' operating points.")
    split: str = Field(description="Always val_calib.")
    temperature: float = Field(description="The policy's temperature.")


class InsightsMapSummary(BaseModel):
    explained_variance_ratio: list[float] = Field(description="The share of the variance each axis explains.")
    key: str = Field(description="The default map's cache key.")
    method: str = Field(description="Its projection: pca.")
    points: int = Field(description="Rows on it.")


class ReferenceSummary(BaseModel):
    C: float = Field(description="The regularisation strength chosen on val_select.")
    kind: str = Field(description="What the reference model is, e.g. logistic regression on pixels.")
    train_rows: int = Field(description="Rows it was trained on.")
    val_test_accuracy: float = Field(description="Its accuracy on val_test.")
    val_test_macro_f1: float = Field(description="Its macro-F1 on val_test.")


class InsightsSummary(BaseModel):
    """What the insights stage recorded (insights/summary.json)."""

    map: InsightsMapSummary = Field(description="The default meaning map it made.")
    model_accuracy: float = Field(description="The run's model's accuracy on val_test.")
    model_sha256: str = Field(description="The hash of the model weights the insights describe.")
    n: int = Field(description="Rows in val_test.")
    reads: dict[str, list[str]] = Field(description="The splits each reader read, by reader.")
    reference: ReferenceSummary | None = Field(description="The simple reference model, when it was fitted.")
    run: str = Field(description="Run name.")
    storyboard: dict[str, int] = Field(description="Rows per storyboard outcome, and the number of confused pairs.")
    timings: dict[str, float] = Field(description="Seconds each part of the stage took.")


class LrRange(BaseModel):
    """lr: auto's learning-rate range test (trainers/lr_range.py), as the run recorded it."""

    lrs: list[float] = Field(description="The learning rate of each step, growing geometrically.")
    losses: list[float] = Field(description="The smoothed training loss after each step.")
    suggested_lr: float = Field(description="The rate the run trained with.")
    steps_run: int = Field(description="Steps taken (fewer than asked when the loss diverged).")
    stopped_early: bool = Field(description="The loss diverged before the largest rate.")
    rule: str = Field(description="How the rate was chosen from the curve.")


class Budget(BaseModel):
    """The compute budget of a config; the sections' contents depend on the modality
    and may grow, so keys not declared here are kept."""

    model_config = ConfigDict(extra="allow")

    benchmark: dict[str, Any] = Field(
        description="The micro-benchmark: device, threads, batch size, steps and each step's seconds, the median."
    )
    cache_file: str = Field(description="The file the budget is cached in.")
    cached: bool = Field(description="Whether it came from the cache (a file read) rather than being measured now.")
    compute_seconds: float = Field(description="How long measuring it took.")
    computed: str = Field(description="When it was measured (UTC, ISO 8601).")
    data: dict[str, Any] = Field(description="The data: modality, source, rows per split, classes.")
    estimate: dict[str, Any] = Field(
        description="The training time estimate: steps per epoch, workers, seconds per epoch and for all epochs."
    )
    flops: dict[str, Any] = Field(
        description="FLOPs per sample (forward, backward, inference) and per epoch, and how they were counted."
    )
    format_version: int = Field(description="The budget format's version (a cache of another version is measured again).")
    inputs: dict[str, Any] = Field(
        description="The model's input sizes: patches for images, tokens for texts, per sample and per epoch."
    )
    key: str = Field(description="The cache key (data, preprocessing, model and machine).")
    parameters: dict[str, Any] = Field(description="Parameters: total, trainable, the trainable share, the training mode.")
