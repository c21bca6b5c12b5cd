"""``python -m hogwild_bench +exp=limo_sweep`` -- Hydra entry point (configs in the repo's ``conf/``)."""

from __future__ import annotations

import sys

import hydra

from hogwild_bench.config import register_configs

register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from hogwild_bench.config import ConfigError, check_group_choices
    from hogwild_bench.engine import UnsupportedModelError
    from hogwild_bench.loading import ModelLoadError
    from hogwild_bench.runner import run
    from hogwild_bench.store import ShardBusyError
    from hogwild_bench.tasks import DatasetError

    try:
        check_group_choices(HydraConfig.get().runtime.choices)
        run(cfg)
    except (ConfigError, DatasetError, ModelLoadError, UnsupportedModelError, ShardBusyError) as error:
        # a problem with the input, not a bug: say what it is, without a traceback
        print(f"hogwild_bench: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("hogwild_bench: interrupted; stored records are kept, run the same command to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
