"""/api/v1/runs/{name}/review: the answers the run's served model sent to a person
(assist; abstain when asked), least confident first; labelling, skipping and undoing
them; and exporting the labels as a dataset a later run trains on (`ray_app.review`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi import status as http_status

from ray_app.control_plane.deps import Plane, RunReviews
from ray_app.control_plane.loop_models import (
    ReviewExport,
    ReviewItemDetail,
    ReviewQueuePage,
    ReviewSubmission,
    StoredReview,
)
from ray_app.insights.examples import DEFAULT_THUMBNAIL_PX, MAX_THUMBNAIL_PX
from ray_app.review import ReviewStatus, export_reviewed

router = APIRouter(tags=["review"])
ItemId = Annotated[str, Path(min_length=1, max_length=64, description="The item's id, from the queue.")]


@router.get("/runs/{name}/review", response_model=ReviewQueuePage,
            summary="The review queue: answers sent to a person, least confident first, with counts per status")
def review_queue(
    queue: RunReviews,
    decisions: Annotated[str, Query(pattern=r"^(assist|abstain|accept)(,(assist|abstain|accept)){0,2}$",
                                    description="Which answers, comma-separated: assist, abstain, accept (the "
                                    "audit sample: accepted answers that kept their input).")] = "assist",
    status: Annotated[ReviewStatus, Query(description="pending, labelled, skipped or all.")] = "pending",
    model_version: Annotated[str | None, Query(max_length=200, description="Only this model version's answers.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Items per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="Items to pass over first.")] = 0,
) -> dict[str, Any]:
    return queue.queue(tuple(decisions.split(",")), model_version or None, status, limit, offset)


@router.get("/runs/{name}/review/items/{item}", response_model=ReviewItemDetail,
            summary="One review item with its input: the text, or the image as a base64 PNG")
def review_item(
    queue: RunReviews, item: ItemId,
    thumbnail_px: Annotated[int, Query(ge=8, le=MAX_THUMBNAIL_PX, description="Longest side of the image.")]
    = DEFAULT_THUMBNAIL_PX,
) -> dict[str, Any]:
    return queue.item_detail(item, thumbnail_px)


@router.put("/runs/{name}/review/items/{item}", response_model=StoredReview,
            summary="Label an item with one of the run's classes, or skip it (409 when already reviewed)")
def label_item(queue: RunReviews, item: ItemId, submission: ReviewSubmission) -> dict[str, Any]:
    review = queue.label(item, submission.label, submission.skip, submission.reviewer)
    return {"id": review.item_id, **review.public()}


@router.delete("/runs/{name}/review/items/{item}", status_code=http_status.HTTP_204_NO_CONTENT,
               summary="Undo an item's review (404 when it has none)")
def undo_review(queue: RunReviews, item: ItemId) -> None:
    queue.undo(item)


@router.post("/runs/{name}/review/export", response_model=ReviewExport, status_code=http_status.HTTP_201_CREATED,
             summary="Write the labelled items as a Parquet dataset with the run's source columns")
def export_review(
    queue: RunReviews, plane: Plane,
    model_version: Annotated[str | None, Query(max_length=200, description="Only this model version's labels.")]
    = None,
) -> dict[str, Any]:
    return export_reviewed(queue.run, plane.settings.runs_root, model_version or None)
