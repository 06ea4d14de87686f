"""The bundle: a directory that serves without the run that made it.

    bundle/
      model.safetensors     weights (the selected / EMA weights of the run)
      backbone/config.json  the backbone's Hugging Face config (rebuilt with from_config)
      classifier.json       head, pooling, label names, preprocessing
      tokenizer/            text models only: the tokenizer (save_pretrained), nothing else
      policy.json           temperature + decision rule
      bundle.json           format version, run, splits fingerprint, versions and the
                            sha256 of every other file

`load_bundle` verifies every listed file before reading any of them and refuses a
bundle with a missing or altered file or an unknown format version. Nothing on the load
path unpickles: weights are safetensors, everything else JSON.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.policy import Policy
from trainers.model import CLASSIFIER_FILE, WEIGHTS_FILE, Classifier, file_sha256, load_classifier
from trainers.preprocess import TextSpec, load_tokenizer
from trainers.views import IDENTITY_ONLY

# Version 2: classifier.json names views other than identity (multi-view inference,
# trainers/views.py). A version-1 reader would ignore them and serve single-view
# logits the policy was not calibrated on, so such bundles are marked 2 and refused
# there; a bundle without views stays 1, readable by every version.
BUNDLE_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
MANIFEST = "bundle.json"
POLICY_FILE = "policy.json"
TOKENIZER_DIR = "tokenizer"


class BundleError(ValueError):
    """The directory is not a bundle this version can serve, or it was altered."""


sha256_of = file_sha256  # one definition, shared with model.init_from's weight check


def _listed_files(directory: Path) -> list[str]:
    return sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST
    )


def format_version_for(spec: dict[str, Any]) -> int:
    """The oldest bundle format that serves this classifier.json correctly."""
    return 1 if tuple(spec.get("views", IDENTITY_ONLY)) == IDENTITY_ONLY else BUNDLE_FORMAT_VERSION


def export_bundle(model_dir: Path, policy: Policy, destination: Path, details: dict[str, Any]) -> Path:
    """Copy a saved classifier and its policy into `destination`, then seal it with
    bundle.json. Written to a sibling temp directory and renamed at the end."""
    tmp = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    spec = json.loads((tmp / CLASSIFIER_FILE).read_text())
    preprocessing = spec.get("preprocessing", {})
    if preprocessing.get("kind") == "text":
        # The run points at a tokenizer directory somewhere on disk; the bundle carries
        # the tokenizer itself, saved afresh: that directory may be a whole model
        # directory (a backbone given by id), whose weights do not belong here.
        load_tokenizer(TextSpec(**{k: v for k, v in preprocessing.items() if k != "kind"})).save_pretrained(
            tmp / TOKENIZER_DIR
        )
        preprocessing["tokenizer"] = TOKENIZER_DIR
        (tmp / CLASSIFIER_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    (tmp / POLICY_FILE).write_text(policy.model_dump_json(indent=2) + "\n")
    files = {name: sha256_of(tmp / name) for name in _listed_files(tmp)}
    manifest = {
        "format_version": format_version_for(spec),
        "model_version": f"{details.get('run', 'model')}@{files[WEIGHTS_FILE][:12]}",
        "label_names": spec["label_names"],
        **details,
        "files": files,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(destination, ignore_errors=True)
    tmp.rename(destination)
    return destination


def is_bundle(directory: Path) -> bool:
    """Whether `directory` holds a bundle's manifest (not whether it verifies)."""
    return (directory / MANIFEST).is_file()


def verify_bundle(directory: Path) -> dict[str, Any]:
    """The manifest, after checking the format version and every file's hash."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"'{directory}' is not a bundle: it has no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc})") from None
    version = manifest.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise BundleError(
            f"bundle format version {version!r} is not supported (this ray-app reads versions "
            f"{list(READABLE_FORMAT_VERSIONS)}); re-export the run with this ray-app"
        )
    files: dict[str, str] = manifest.get("files", {})
    missing = sorted(name for name in files if not (directory / name).is_file())
    if missing:
        raise BundleError(f"bundle '{directory}' is missing {missing}; re-export it")
    altered = sorted(name for name, digest in files.items() if sha256_of(directory / name) != digest)
    if altered:
        raise BundleError(
            f"bundle '{directory}': {altered} do not match their sha256 in {MANIFEST}; "
            "the bundle was altered or corrupted, re-export it"
        )
    for required in (WEIGHTS_FILE, CLASSIFIER_FILE, POLICY_FILE):
        if required not in files:
            raise BundleError(f"bundle '{directory}' lists no {required} in {MANIFEST}")
    return manifest


@dataclass
class LoadedBundle:
    model: Classifier
    spec: dict[str, Any]  # classifier.json
    policy: Policy
    manifest: dict[str, Any]
    directory: Path

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])


def load_bundle(directory: Path) -> LoadedBundle:
    directory = Path(directory)
    manifest = verify_bundle(directory)
    model, spec = load_classifier(directory)
    preprocessing = spec.get("preprocessing", {})
    if preprocessing.get("kind") == "text":
        preprocessing["tokenizer"] = str(directory / preprocessing["tokenizer"])
    policy = Policy.model_validate_json((directory / POLICY_FILE).read_text())
    return LoadedBundle(model=model, spec=spec, policy=policy, manifest=manifest, directory=directory)
