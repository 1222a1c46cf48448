"""``edgefleet release build|publish``: make a signed, registered model release.

``build`` runs anywhere (it needs only the model and its data); ``publish`` runs on the
server machine, like ``edgefleet keys init``, and needs the offline image-targets key
folder when that key was kept offline. Thin layer over :mod:`edgefleet.tools.release` and
:mod:`edgefleet.fleet_server.updates.publish`.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.tools.cli.server import data_dir_option

_FILE = click.Path(dir_okay=False, path_type=Path)


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach the ``release`` group to the root command."""

    @cli.group("release")
    def release() -> None:
        """Build model bundles and publish them as signed, registered releases."""

    @release.command("build")
    @click.argument("model", type=_FILE)
    @click.option("--name", required=True, help="Model name (letters, digits, '._-').")
    @click.option("--version", "version", required=True, help="Release version, e.g. 1.2.0.")
    @click.option("--reference", type=_FILE, default=None,
                  help="Reference inputs (.npy, or .npz with one array per input) for the "
                  "drift profile.")
    @click.option("--eval", "eval_x", type=_FILE, default=None,
                  help="Evaluation inputs (.npy/.npz) for the metrics.")
    @click.option("--labels", type=_FILE, default=None,
                  help="Class labels for --eval (int [N] or one-hot [N, C]): adds accuracy.")
    @click.option("--baseline", type=_FILE, default=None,
                  help="The float model a quantized MODEL was made from: records the "
                  "measured change from quantization.")
    @click.option("--parent", default=None, help="The version this release derives from.")
    @click.option("--training-run", default=None, help="Training run id for the lineage.")
    @click.option("--federated-round", default=None,
                  help="Federated round for the lineage.")
    @click.option("--latency-budget-ms", type=click.FloatRange(min=0, min_open=True),
                  default=None, help="Warm-up latency budget (default: measured p99 × 5, "
                  "at least 50 ms).")
    @click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("."),
                  show_default=True, help="Output directory (or the file NAME-VERSION.tar).")
    @click.option("--force", is_flag=True, help="Replace an existing bundle file.")
    def build(*, model: Path, name: str, version: str, reference: Path | None,
              eval_x: Path | None, labels: Path | None, baseline: Path | None,
              parent: str | None, training_run: str | None, federated_round: str | None,
              latency_budget_ms: float | None, out: Path, force: bool) -> None:
        """Build the bundle NAME-VERSION.tar from MODEL: the model file plus its manifest
        (signature, sample input, latency budget, drift reference profile, evaluation
        metrics, lineage). Prints the bundle path, then a summary on stderr.
        """
        from edgefleet.tools.errors import ToolError
        from edgefleet.tools.release import ReleaseOptions, build_release

        if labels is not None and eval_x is None:
            raise click.BadParameter("--labels needs --eval", param_hint="--labels")
        try:
            report = build_release(
                model, out, name=name, version=version, reference=reference, eval_x=eval_x,
                eval_y=labels, parent=parent, baseline=baseline, training_run=training_run,
                federated_round=federated_round,
                options=ReleaseOptions(latency_budget_ms=latency_budget_ms), overwrite=force,
            )
        except (ToolError, OSError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(str(report.path))
        click.echo(report.to_text(), err=True)

    @release.command("publish")
    @click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @data_dir_option
    @click.option("--offline-dir", type=click.Path(file_okay=False, path_type=Path),
                  default=None, help="Folder holding the offline image-targets key (needed "
                  "when `keys init` was given --offline-dir).")
    def publish(bundle: Path, data_dir: Path, offline_dir: Path | None) -> None:
        """Add BUNDLE to the image repository (a signed target named NAME-VERSION.tar) and
        register its model as a new version in the registry.

        Publishing the same bundle again is a no-op; another bundle with the same name and
        version is refused.
        """
        from edgefleet.fleet_server.audit import Actor, ActorKind
        from edgefleet.fleet_server.updates.errors import UpdatesError
        from edgefleet.fleet_server.updates.publish import publish_release

        key_dirs = [data_dir / "keys"] + ([offline_dir] if offline_dir is not None else [])
        actor = Actor(ActorKind.SYSTEM, "cli", "release-cli", "admin")
        try:
            result = publish_release(bundle, data_dir, key_dirs, actor)
        except (UpdatesError, OSError) as e:
            raise click.ClickException(str(e)) from None
        state = "already published" if result.already_published else "published"
        click.echo(f"{state}: target {result.target_name} ({result.length} bytes, sha256 "
                   f"{result.sha256})")
        click.echo(f"registry: {result.model} version {result.version} "
                   f"(stage {result.stage})")
