"""The optional canary rollout of an accepted federated result (the job's ``canary``).

What devices install is the int8 version, so that is what the canary rolls out:

1. :func:`publish_int8` builds its release bundle (``edgefleet.tools.release.
   build_release``: drift profile and accuracy on the job's hold-out set, the float
   version as baseline and parent, the job as training run) and publishes it
   (``updates.publish.publish_release``: listed in the image repository, signed with the
   image targets key, and registered as ``<version>-int8`` with the bundle's lineage);
2. :func:`start_canary` moves that version to ``staging`` and creates the rollout through
   the rollouts service (``RolloutService.create``), with the job's ``canary`` fields.

Neither step may fail the job: the runner records why a canary was not created
(``canary not created: <reason>``) in the job's result and in the audit log. The most
common reason is by design: the image targets key is kept offline (``keys init
--offline-dir``), so only an operator with that key can publish a release.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.fleet_server.audit import Actor
from edgefleet.fleet_server.fljobs.errors import FlJobError
from edgefleet.fleet_server.fljobs.spec import JobSpec, canary_spec
from edgefleet.fleet_server.services import Services

logger = logging.getLogger(__name__)


class CanaryError(FlJobError):
    """The canary could not be created (the message is the reason recorded)."""


def publish_int8(services: Services, spec: JobSpec, *, job_id: int, version: str,
                 float_version: str, int8_path: Path, float_path: Path, holdout: Any,
                 work_dir: Path, actor: Actor) -> dict[str, Any]:
    """Build and publish the release of the int8 candidate, which registers it as
    ``version``; the publish result (target name, sha256, length).

    Raises:
        CanaryError: the bundle cannot be built or published (offline key, no update
            repositories, a name taken by other bytes, ...). Nothing is registered then.
    """
    from edgefleet.fleet_server.updates.api import keys_dir
    from edgefleet.fleet_server.updates.errors import UpdatesError
    from edgefleet.fleet_server.updates.publish import publish_release
    from edgefleet.tools.errors import ToolInputError
    from edgefleet.tools.release import build_release

    out = work_dir / "release"
    out.mkdir(parents=True, exist_ok=True)
    x_path, y_path = work_dir / "holdout-x.npy", work_dir / "holdout-y.npy"
    np.save(x_path, np.asarray(holdout.x, dtype=np.float32))
    np.save(y_path, np.asarray(holdout.y))
    try:
        report = build_release(int8_path, out, name=spec.model,
                               version=version, reference=x_path, eval_x=x_path,
                               eval_y=y_path, parent=float_version, baseline=float_path,
                               training_run=f"fljob:{job_id}",
                               federated_round=str(spec.rounds), overwrite=True)
    except ToolInputError as e:
        raise CanaryError(f"the release bundle cannot be built: {e}") from e
    try:
        published = publish_release(report.path, services.config.data_dir,
                                    [keys_dir(services)], actor, store=services.store)
    except UpdatesError as e:  # PublishError, MissingSigningKeyError, KeyMaterialError
        raise CanaryError(f"the release cannot be published: {e}") from e
    logger.info("federated job %d: published %s", job_id, published.target_name)
    return {"target": published.target_name, "sha256": published.sha256,
            "length": published.length}


def start_canary(services: Services, spec: JobSpec, *, job_id: int, version: str,
                 actor: Actor) -> dict[str, Any]:
    """Move the published ``version`` to staging and start the job's canary rollout of
    it; ``{"rollout_id", "version", "name"}``.

    Raises:
        CanaryError: the stage change or the rollout was refused (devices busy in another
            rollout, no device matches the target any more, ...).
    """
    from edgefleet.fleet_server.registry.api import registry_service
    from edgefleet.fleet_server.registry.errors import RegistryError
    from edgefleet.fleet_server.registry.stages import Stage
    from edgefleet.fleet_server.rollouts.errors import RolloutConflict, RolloutInvalid
    from edgefleet.fleet_server.rollouts.service import rollout_service

    rollout = canary_spec(spec, version)
    registry = registry_service(services)
    try:
        if registry.get_version(spec.model, version)["stage"] == Stage.DRAFT.value:
            registry.transition(spec.model, version, Stage.STAGING, actor,
                                reason=f"canary of federated job {job_id}")
    except RegistryError as e:
        raise CanaryError(f"{spec.model}@{version} cannot move to staging: {e}") from e
    try:
        created = rollout_service(services).create(rollout, actor)
    except (RolloutInvalid, RolloutConflict) as e:
        raise CanaryError(f"the rollout was refused: {e}") from e
    logger.info("federated job %d: canary rollout %s of %s@%s", job_id, created["id"],
                spec.model, version)
    return {"rollout_id": int(created["id"]), "version": version, "name": rollout.name}
