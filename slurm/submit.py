"""Print (or run) the sbatch commands for an experiment: one job array per sweep point, one task per shard.

    python slurm/submit.py +exp=limo_sweep --shards 8 --dry-run
    python slurm/submit.py +exp=limo_sweep model=qwen3_8b --shards 4 --partition gpu

The experiment is composed with Hydra first, so a wrong override fails here, before anything is queued.
Sweep points are the product of the experiment's ``hydra.sweeper.params`` (e.g. the models of
limo_sweep); an override on the command line for a swept key pins it.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent
SBATCH_SCRIPT = ROOT / "slurm" / "hogwild.sbatch"
sys.path.insert(0, str(ROOT))


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """Override lists, one per sweep point, composed and validated with Hydra."""
    from omegaconf import OmegaConf

    from hogwild_bench.config import check_group_choices, register_configs, validate

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "hogwild_bench" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        check_group_choices(OmegaConf.to_container(cfg.hydra.runtime.choices))
        pinned = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
        params = {k: str(v).split(",") for k, v in (cfg.hydra.sweeper.params or {}).items() if k not in pinned}
        keys = sorted(params)
        points = [
            [f"{k}={v}" for k, v in zip(keys, values)] for values in itertools.product(*(params[k] for k in keys))
        ]
        for point in points:  # every point must compose and validate before anything is submitted
            validate(compose("config", overrides=[*overrides, *point]))
    return points


def sbatch_commands(
    overrides: list[str], shards: int, partition: str | None, runs: str | None, extra: list[str] = ()
) -> list[list[str]]:
    commands = []
    for point in sweep_points(overrides):
        name = "hogwild-" + "-".join(p.split("=", 1)[1] for p in point) if point else "hogwild"
        export = f"ALL,HOGWILD_SHARDS={shards}" + (f",HOGWILD_RUNS={runs}" if runs else "")
        command = ["sbatch", f"--array=0-{shards - 1}", f"--job-name={name}", f"--export={export}"]
        if partition:
            command.append(f"--partition={partition}")
        command += list(extra)
        commands.append([*command, str(SBATCH_SCRIPT.relative_to(ROOT)), *overrides, *point])
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=1, help="array tasks per sweep point (dataset shards)")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--runs", default=None, help="shared results root (HOGWILD_RUNS); default: runs/")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch commands, submit nothing")
    parser.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                        help="extra sbatch option, repeatable (e.g. --sbatch=--gpus-per-task=0)")  # fmt: skip
    args, overrides = parser.parse_known_args(argv)
    if args.shards < 1:
        parser.error(f"--shards must be >= 1, got {args.shards}")
    unknown = [o for o in overrides if o.startswith("--")]
    if unknown:
        parser.error(f"unknown options {unknown}; Hydra overrides look like key=value or +exp=name")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hogwild_bench.config import ConfigError

    try:
        commands = sbatch_commands(overrides, args.shards, args.partition, args.runs, args.sbatch)
    except (ConfigError, HydraException, OmegaConfBaseException) as error:  # a wrong override: one message
        print(f"submit.py: nothing submitted: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    for command in commands:
        print(shlex.join(command))
    if args.dry_run:
        return 0
    if shutil.which("sbatch") is None:
        print("sbatch not found: run on a SLURM login node, or use --dry-run", file=sys.stderr)
        return 1
    for command in commands:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"sbatch refused the job: {result.stderr.strip()}", file=sys.stderr)
            return result.returncode
        print(result.stdout.strip())  # "Submitted batch job <id>"
    return 0


if __name__ == "__main__":
    sys.exit(main())
