"""The benchmark protocol's settings: the structure groups, the split, the schedules (``benchmarks/protocol.toml``)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from hydrapicker.device import check_device
from hydrapicker.errors import HydraPickerError

__all__ = ["GROUPS", "SCORE_FLOOR", "BenchmarkConfig", "load_config"]


#: The structure groups of the protocol.
GROUPS: tuple[str, ...] = ("sources", "targets", "unseen")

#: Picks are kept down to this score so that AP and AUROC see the whole ranking.
SCORE_FLOOR = 0.001


@dataclass(frozen=True)
class BenchmarkConfig:
    """One benchmark protocol (a TOML file; ``[quick]`` overrides any key for ``--quick``).

    Attributes:
        structures: folder of atomic models; ``targets`` and ``unseen`` are structure ids in it;
            ``sources`` (empty: every other structure but ``exclude``).
        source_conditions, target_conditions: imaging conditions (datasets) per structure.
        micrographs, target_micrographs: micrographs per dataset; the last ``test_micrographs``
            are test, the ``val_micrographs`` before them validation, the rest training (of a
            target only the first ``few_shot_micrographs``).
        preset ... size_head: the multi-head model's training (:class:`hydrapicker.training.config.TrainConfig`;
            the single-head models never have a size head).
        single_epochs, single_batches: each target's single-head model (Table 2's "7 models").
        finetune_epochs, finetune_batches: each few-shot head (Tables 3 and 4).
        diameter_errors: relative errors of the particle diameter given at pick time.
        baselines: name -> script run as ``SCRIPT MICROGRAPHS... --out DIR --diameter-px N
            --pixel-size A`` that writes ``DIR/picks.csv``; paths relative to the config file.
        real: bundled real datasets (:func:`hydrapicker.apps.demo.bundled_datasets`) picked zero-shot.
        device, threads, processes: where the networks run; torch threads; simulation processes.
    """

    structures: Path
    targets: tuple[str, ...]
    unseen: tuple[str, ...]
    sources: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    seed: int = 0
    size: int = 1024
    source_conditions: int = 2
    target_conditions: int = 1
    micrographs: int = 6
    target_micrographs: int = 6
    test_micrographs: int = 2
    val_micrographs: int = 1
    few_shot_micrographs: int = 2
    preset: str = "tiny"
    epochs: int = 40
    stage2_epochs: int = 20
    t0_epochs: int = 40
    batches_per_epoch: int = 50
    val_batches: int = 8
    scale_jitter: tuple[float, float] = (0.7, 1.4)
    size_head: bool = False
    single_epochs: int = 10
    single_batches: int = 25
    finetune_epochs: int = 10
    finetune_batches: int = 20
    diameter_errors: tuple[float, ...] = (-0.2, -0.1, 0.0, 0.1, 0.25)
    baselines: tuple[tuple[str, Path], ...] = ()
    real: tuple[str, ...] = ()
    device: str = "cpu"
    threads: int | None = None
    processes: int = 2

    def __post_init__(self) -> None:
        for name in ("micrographs", "target_micrographs"):
            if getattr(self, name) < self.test_micrographs + self.val_micrographs + 1:
                raise HydraPickerError(
                    f"{name} = {getattr(self, name)}: too few for {self.test_micrographs} test, "
                    f"{self.val_micrographs} val and a training micrograph"
                )
        if not self.targets or not self.unseen:
            raise HydraPickerError("the benchmark needs target structures and unseen structures")
        if 0.0 not in self.diameter_errors:
            raise HydraPickerError("diameter_errors must include 0 (the true diameter)")
        check_device(self.device)


def load_config(path: str | os.PathLike, *, quick: bool = False, **overrides: object) -> BenchmarkConfig:
    """Read a benchmark TOML; ``quick`` applies its ``[quick]`` table; ``overrides`` win over both."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise HydraPickerError(f"{path}: no such benchmark config") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HydraPickerError(f"{path}: not a valid TOML file ({exc})") from None
    quick_table = data.pop("quick", {})
    if quick:
        data.update(quick_table)
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(BenchmarkConfig)}
    for key in data:
        if key not in known:
            raise HydraPickerError(f"{path}: unknown field {key!r} (known: {', '.join(sorted(known))})")
    for key in ("structures", "targets", "unseen"):
        if key not in data:
            raise HydraPickerError(f"{path}: missing field {key!r}")
    if not isinstance(data.get("size_head", False), bool):
        raise HydraPickerError(f"{path}: field 'size_head' must be true or false, got {data['size_head']!r}")
    base = path.resolve().parent
    data["structures"] = (base / data["structures"]).resolve()
    data["baselines"] = tuple(
        (name, (base / script).resolve()) for name, script in dict(data.get("baselines", {})).items()
    )
    for key in ("targets", "unseen", "sources", "exclude", "real", "diameter_errors", "scale_jitter"):
        if key in data:
            data[key] = tuple(data[key])
    try:
        return BenchmarkConfig(**data)
    except TypeError as exc:
        raise HydraPickerError(f"{path}: {exc}") from None
