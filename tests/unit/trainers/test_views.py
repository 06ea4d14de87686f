"""Multi-view inference (trainers/views.py, `model.views`): what each view does to a
known tensor, the logit mean, eval-only use, and the views surviving save / load."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from ray_app.config import load_config, validate_config
from ray_app.errors import ConfigError
from tests.helpers.configs import SMOKE
from tests.helpers.models import TINY_BERT, model_cfg
from trainers.config import ViewName
from trainers.model import Classifier, build_classifier, load_classifier, save_classifier
from trainers.views import CROP_ANCHORS, VIEW_NAMES, apply_view, check_view_names, crop_window

QUADRANTS = torch.tensor(
    [[1.0, 1.0, 2.0, 2.0],
     [1.0, 1.0, 2.0, 2.0],
     [3.0, 3.0, 4.0, 4.0],
     [3.0, 3.0, 4.0, 4.0]]
).reshape(1, 1, 4, 4)


def test_every_configurable_view_has_an_op() -> None:
    assert set(VIEW_NAMES) == set(ViewName.__args__)
    assert set(CROP_ANCHORS) == set(VIEW_NAMES) - {"identity", "hflip"}
    x = torch.randn(2, 3, 8, 8)
    for name in VIEW_NAMES:
        assert apply_view(name, x).shape == x.shape  # the backbone always gets its size
    assert torch.equal(apply_view("identity", x), x)


def test_hflip_mirrors_the_width_only() -> None:
    x = torch.arange(12.0).reshape(1, 2, 2, 3)
    expected = torch.tensor([[[[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]], [[8.0, 7.0, 6.0], [11.0, 10.0, 9.0]]]])
    assert torch.equal(apply_view("hflip", x), expected)


def test_corner_crops_pick_their_corner() -> None:
    # Half of each side of the quadrant image is exactly one quadrant: resized back, constant.
    for name, value in {"top_left": 1.0, "top_right": 2.0, "bottom_left": 3.0, "bottom_right": 4.0}.items():
        assert torch.equal(apply_view(name, QUADRANTS, crop_fraction=0.5), torch.full((1, 1, 4, 4), value)), name


def test_center_crop_takes_the_middle_and_resizes_bilinearly() -> None:
    x = torch.full((1, 1, 4, 4), 9.0)
    x[0, 0, 1:3, 1:3] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # the border (9) must not leak in
    # Bilinear 2 -> 4 (half-pixel centres) samples at 0, 0.25, 0.75, 1 of the 2x2 window,
    # and v = 1 + col + 2 * row is linear in it, so the result is exact.
    expected = torch.tensor(
        [[1.0, 1.25, 1.75, 2.0],
         [1.5, 1.75, 2.25, 2.5],
         [2.5, 2.75, 3.25, 3.5],
         [3.0, 3.25, 3.75, 4.0]]
    )
    torch.testing.assert_close(apply_view("center_crop", x, crop_fraction=0.5)[0, 0], expected)


def test_crop_window_sizes_and_offsets() -> None:
    assert crop_window(8, 8, 0.875, CROP_ANCHORS["center_crop"]) == (0, 0, 7, 7)  # leftover pixel: bottom/right
    assert crop_window(8, 8, 0.75, CROP_ANCHORS["center_crop"]) == (1, 1, 6, 6)
    assert crop_window(8, 8, 0.75, CROP_ANCHORS["bottom_right"]) == (2, 2, 6, 6)
    assert crop_window(8, 8, 0.75, CROP_ANCHORS["top_right"]) == (0, 2, 6, 6)
    assert crop_window(224, 224, 0.875, CROP_ANCHORS["center_crop"]) == (14, 14, 196, 196)
    assert crop_window(2, 2, 0.1, CROP_ANCHORS["bottom_left"]) == (1, 0, 1, 1)  # at least one pixel


def views_model(views: tuple[str, ...], fraction: float = 0.75) -> tuple[Classifier, Classifier]:
    """A tiny ViT classifier with `views` (eval mode) and an identity-only copy of it."""
    torch.manual_seed(0)
    cfg = model_cfg(views=list(views), view_crop_fraction=fraction)
    model = build_classifier(cfg, 3).eval()
    plain = copy.deepcopy(model)
    plain.views = ("identity",)
    return model, plain


def test_logits_are_the_mean_of_the_per_view_logits() -> None:
    model, plain = views_model(("identity", "hflip", "center_crop", "bottom_right"), fraction=0.75)
    torch.manual_seed(1)
    x = torch.randn(5, 1, 8, 8)

    def resized(window: torch.Tensor) -> torch.Tensor:
        return F.interpolate(window, size=(8, 8), mode="bilinear", align_corners=False)

    by_hand = [x, torch.flip(x, dims=[3]), resized(x[:, :, 1:7, 1:7]), resized(x[:, :, 2:8, 2:8])]
    with torch.no_grad():
        per_view = torch.stack([plain(pixel_values=v) for v in by_hand])
        torch.testing.assert_close(model(pixel_values=x), per_view.sum(dim=0) / 4)
        assert not torch.allclose(per_view[0], per_view[2], atol=1e-3)  # the views did differ


def test_views_change_eval_logits_but_not_training() -> None:
    model, plain = views_model(("identity", "hflip"))
    torch.manual_seed(2)
    x = torch.randn(4, 1, 8, 8)
    assert not torch.equal(x, x.flip(-1))
    with torch.no_grad():
        multi, single = model(pixel_values=x), plain(pixel_values=x)
    assert (multi - single).abs().max() > 1e-3  # views change logits
    # Train mode is single-view (TINY_VIT and the head have no dropout: deterministic).
    model.train()
    plain.train()
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x), plain(pixel_values=x))


def test_views_refuse_text_inputs() -> None:
    torch.manual_seed(0)
    bert = build_classifier(model_cfg(backbone=TINY_BERT), 2).eval()
    bert.views = ("identity", "hflip")
    with pytest.raises(ValueError, match=r"views \['identity', 'hflip'\] apply to images"):
        bert(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, 3, dtype=torch.long))


def test_saved_classifier_keeps_its_views(tmp_path: Path) -> None:
    model, plain = views_model(("identity", "hflip", "top_left"), fraction=0.625)
    cfg = model_cfg(views=["identity", "hflip", "top_left"], view_crop_fraction=0.625)
    save_classifier(model, cfg, ["a", "b", "c"], tmp_path, extra={})
    spec = json.loads((tmp_path / "classifier.json").read_text())
    assert spec["views"] == ["identity", "hflip", "top_left"] and spec["view_crop_fraction"] == 0.625
    loaded, _ = load_classifier(tmp_path)
    assert loaded.views == ("identity", "hflip", "top_left") and loaded.view_crop_fraction == 0.625
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x), model(pixel_values=x))
        assert not torch.allclose(loaded(pixel_values=x), plain(pixel_values=x), atol=1e-3)


def test_classifier_json_without_views_loads_single_view(tmp_path: Path) -> None:
    model, plain = views_model(("identity", "hflip"))
    save_classifier(model, model_cfg(views=["identity", "hflip"]), ["a", "b", "c"], tmp_path, extra={})
    spec = json.loads((tmp_path / "classifier.json").read_text())
    del spec["views"], spec["view_crop_fraction"]  # as written before views existed
    (tmp_path / "classifier.json").write_text(json.dumps(spec))
    loaded, _ = load_classifier(tmp_path)
    assert loaded.views == ("identity",)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x), plain(pixel_values=x))


def test_classifier_json_with_an_unknown_view_is_refused(tmp_path: Path) -> None:
    model, _ = views_model(("identity",))
    save_classifier(model, model_cfg(), ["a", "b", "c"], tmp_path, extra={})
    spec = json.loads((tmp_path / "classifier.json").read_text())
    (tmp_path / "classifier.json").write_text(json.dumps({**spec, "views": ["identity", "rotate90"]}))
    with pytest.raises(ValueError, match=r"classifier.json: unknown view\(s\) \['rotate90'\]"):
        load_classifier(tmp_path)


def test_check_view_names() -> None:
    assert check_view_names(["hflip", "identity"]) == ("hflip", "identity")
    with pytest.raises(ValueError, match="at least one view"):
        check_view_names([])
    with pytest.raises(ValueError, match="must not repeat"):
        check_view_names(["hflip", "hflip"])


def test_views_config_errors() -> None:
    cfg = load_config(SMOKE, ["model.views=[identity, hflip, center_crop]"])
    assert cfg.model.views == ["identity", "hflip", "center_crop"]
    assert load_config(SMOKE).model.views == ["identity"]  # the default: one plain forward
    with pytest.raises(ConfigError) as info:
        load_config(SMOKE, ["model.views=[]"])
    assert info.value.exit_code == 2
    assert "model.views: give at least one view, e.g. [identity]" in "\n".join(info.value.problems)
    with pytest.raises(ConfigError, match=r"model.views: \['hflip'\] listed more than once"):
        load_config(SMOKE, ["model.views=[identity, hflip, hflip]"])
    with pytest.raises(ConfigError, match=r"model.views.1: Input should be 'identity', 'hflip', 'center_crop'"):
        load_config(SMOKE, ["model.views=[identity, vflip]"])
    with pytest.raises(ConfigError, match="model.view_crop_fraction: Input should be less than 1"):
        load_config(SMOKE, ["model.view_crop_fraction=1.0"])


def test_views_on_a_text_dataset_are_a_config_error() -> None:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["source"] = {"kind": "csv", "path": "x.csv"}
    raw["model"]["preprocessing"] = {"tokenizer": "tok"}
    assert validate_config(raw).model.views == ["identity"]  # identity alone is fine on text
    raw["model"]["views"] = ["identity", "hflip"]
    with pytest.raises(ConfigError, match=r"model.views \['identity', 'hflip'\] transform images, but "
                                          r"data.source \(kind csv\) holds text: remove model.views"):
        validate_config(raw)
