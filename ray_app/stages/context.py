"""What every stage runs with: the config, the run, the console, and the values derived
from them — each computed once per command, however many stages need it.

`check()` derives them all up front: a backbone or tokenizer that cannot load, a PEFT
plan whose targets match nothing, a bad `model.init_from` are user errors found on the
driver before Ray starts, and the stages then reuse what was checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ray_app.config import AppConfig
from ray_app.console import Console
from ray_app.errors import UserError
from ray_app.runs import Run, resolve_run
from ray_app.splits import SplitReader

if TYPE_CHECKING:
    from trainers.adapters import AdapterPlan
    from trainers.model import InitBackbone
    from trainers.predict import InferenceDevice
    from trainers.preprocess import ImageSpec, TextSpec


@dataclass
class StageContext:
    cfg: AppConfig
    run: Run
    console: Console = field(default_factory=Console.silent)

    @classmethod
    def for_config(cls, cfg: AppConfig, console: Console | None = None) -> StageContext:
        return cls(cfg, Run.for_config(cfg), console or Console.silent())

    def check(self) -> None:
        """Every setup problem that needs no Ray, found now (see the module's docstring)."""
        _ = self.input_spec, self.init_backbone, self.peft_plan

    @cached_property
    def splits(self) -> SplitReader:
        """The run's splits, read through the split contract (every read recorded)."""
        return SplitReader(self.run.splits_dir)

    @cached_property
    def input_spec(self) -> ImageSpec | TextSpec:
        """How split rows become model inputs: image size and normalisation, or the
        tokenizer and sequence length."""
        from trainers.preprocess import check_text_backbone_fits, resolve_image_spec, resolve_text_spec

        model = self.cfg.model
        try:
            if self.cfg.data.source.modality == "image":
                return resolve_image_spec(model)
            spec = resolve_text_spec(model)
            check_text_backbone_fits(model, spec)
            return spec
        except (OSError, ValueError) as exc:
            where = model.backbone.id or "model.backbone.config"
            hint = " A backbone id must be a local directory on hosts without hub access." if model.backbone.id else ""
            raise UserError(f"cannot prepare inputs for backbone '{where}': {exc}.{hint}") from None

    @cached_property
    def init_backbone(self) -> InitBackbone | None:
        """model.init_from as the source run's saved weights (and their sha256 now), or
        a user error: no such run, no trained model, a different backbone, this run."""
        from trainers.model import InitBackbone

        model_dir = self._init_from_model_dir()
        return None if model_dir is None else InitBackbone.of(model_dir)

    def _init_from_model_dir(self) -> Path | None:
        from trainers.model import WEIGHTS_FILE, backbone_mismatch

        if self.cfg.model.init_from is None:
            return None
        try:
            source = resolve_run(self.cfg.model.init_from, Path(self.cfg.storage.root))
        except UserError as exc:
            raise UserError(f"model.init_from: {exc}".replace(", or --root", " (resolved under storage.root)")) from None
        if source.root.resolve() == self.run.root.resolve():
            raise UserError(
                f"model.init_from names this run itself ('{source.name}'): training replaces its model "
                "first; start from another run, or change name_pattern"
            )
        model_dir = source.train.model_dir
        if not (model_dir / WEIGHTS_FILE).is_file():
            raise UserError(
                f"model.init_from: run '{source.name}' has no trained model ({model_dir}); train it "
                f"first: ray-app train {source.config_path}"
            )
        mismatch = backbone_mismatch(self.cfg.model.backbone, model_dir)
        if mismatch:
            raise UserError(
                f"model.init_from: run '{source.name}' has a different backbone ({mismatch}); "
                "model.backbone must match the source run's architecture"
            )
        return model_dir.resolve()

    @cached_property
    def inference_device(self) -> InferenceDevice:
        """Where the run's logits pass runs: as it trains (a GPU per actor, one actor per
        worker, at the training precision, with `scaling.use_gpu`), else one CPU actor."""
        from trainers.predict import InferenceDevice

        scaling = self.cfg.scaling
        if not scaling.use_gpu:
            return InferenceDevice()
        return InferenceDevice(num_gpus=1.0, precision=self.cfg.training.precision, actors=scaling.num_workers)

    @cached_property
    def peft_plan(self) -> AdapterPlan | None:
        """Where the adapters go (training.mode: peft), checked from the backbone's
        module names alone; None in baseline mode."""
        if self.cfg.training.mode != "peft" or self.cfg.training.peft is None:
            return None
        from trainers.adapters import PeftSetupError, check_peft_setup

        try:
            return check_peft_setup(self.cfg.model, self.cfg.training.peft)
        except PeftSetupError as exc:
            raise UserError(str(exc)) from None
