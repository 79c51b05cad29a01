"""sbatch scripts for a sweep's stages: cache -> train -> evaluate (one array task per (model, layer)) -> report.

`write_scripts` writes `<stage>.sbatch` per stage plus `submit.sh`, which submits them chained with
`--dependency=afterok:<previous job>` (an array job counts as ok once every task succeeded). Each array task runs
`python -m abstopk_eval.sweep SPEC --stage <stage> --group $SLURM_ARRAY_TASK_ID` with the same output and cache
directories, so all stages share one cache directory (each (model, layer)'s caches are built by its one cache task,
and later stages only read them).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from abstopk_eval.errors import UserError
from abstopk_eval.io import atomic_write_text

ARRAY_STAGES = ("cache", "train", "evaluate")
"""Stages with one array task per (model, layer), in submission order; `report` follows as one task."""
SUBMIT = "submit.sh"


def _options(extra: Sequence[str], gpu: bool) -> list[str]:
    lines = []
    for option in extra:
        option = option.strip()
        if not option or "\n" in option:
            raise UserError(f"--slurm-option {option!r}: give one sbatch option, e.g. partition=gpu or time=24:00:00")
        lines.append(f"#SBATCH --{option.removeprefix('--')}")
    if gpu and not any(line.startswith(("#SBATCH --gres", "#SBATCH --gpus")) for line in lines):
        lines.append("#SBATCH --gres=gpu:1")
    return lines


def stage_command(spec: Path, stage: str, dirs: dict[str, Path | None], *, python: str | None = None) -> list[str]:
    """The command an array task of `stage` runs (its group index is `$SLURM_ARRAY_TASK_ID`)."""
    command = [python or sys.executable, "-m", "abstopk_eval.sweep", str(Path(spec).resolve())]
    if stage == "report":
        command = [python or sys.executable, "-m", "abstopk_eval.report"]
    else:
        command += ["--stage", stage, "--group", "$SLURM_ARRAY_TASK_ID"]
    for flag, path in dirs.items():
        if path is not None and not (stage == "report" and flag in ("--runs-dir", "--cache-dir")):
            command += [flag, str(Path(path).resolve())]
    return command


def _quoted(command: list[str]) -> str:
    return " ".join(part if part == "$SLURM_ARRAY_TASK_ID" else shlex.quote(part) for part in command)


def write_scripts(
    out_dir: Path,
    spec: Path,
    n_groups: int,
    dirs: dict[str, Path | None],
    *,
    gpu: bool,
    options: Sequence[str] = (),
    python: str | None = None,
) -> list[Path]:
    """Write the stage scripts and submit.sh into `out_dir`; returns their paths (submit.sh last)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--emit slurm {out_dir}: exists and is not a directory")
    if n_groups < 1:
        raise UserError("the sweep has no (model, layer) to run")
    logs = (out_dir / "logs").resolve()
    logs.mkdir(parents=True, exist_ok=True)
    written = []
    for stage in (*ARRAY_STAGES, "report"):
        array = stage != "report"
        header = [
            "#!/bin/bash",
            f"#SBATCH --job-name=abstopk-{stage}",
            *([f"#SBATCH --array=0-{n_groups - 1}"] if array else []),
            f"#SBATCH --output={logs}/{stage}-%A_%a.out" if array else f"#SBATCH --output={logs}/{stage}-%j.out",
            *_options(options, gpu and stage != "report"),
        ]
        body = [
            "set -euo pipefail",
            f"cd {shlex.quote(str(Path.cwd()))}",
            _quoted(stage_command(spec, stage, dirs, python=python)),
        ]
        path = out_dir / f"{stage}.sbatch"
        atomic_write_text(path, "\n".join([*header, "", *body]) + "\n")
        written.append(path)
    chain = ["#!/bin/bash", "# submits the stages, each after the previous one succeeded", "set -euo pipefail",
             'cd "$(dirname "$0")"']  # fmt: skip
    previous = None
    for stage in (*ARRAY_STAGES, "report"):
        dependency = f" --dependency=afterok:${{{previous}%%;*}}" if previous else ""
        chain.append(f"{stage}=$(sbatch --parsable{dependency} {stage}.sbatch)")
        previous = stage
    chain.append('echo "submitted: cache $cache, train $train, evaluate $evaluate, report $report"')
    submit = out_dir / SUBMIT
    atomic_write_text(submit, "\n".join(chain) + "\n")
    submit.chmod(0o755)
    return [*written, submit]
