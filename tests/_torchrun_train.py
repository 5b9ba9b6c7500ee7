"""Run :func:`hydrapicker.train.train` on every rank of a torchrun launch, with a config given as JSON.

Used by tests/test_distributed.py: the command line's training options cannot make crops small
enough for a test, the library can. Usage (under torchrun): ``_torchrun_train.py PROJECT OUT CONFIG_JSON [--resume]``.
"""

from __future__ import annotations

import json
import sys

from hydrapicker import distributed
from hydrapicker.data.project import load_project
from hydrapicker.training.config import TrainConfig
from hydrapicker.training.stages import train

if __name__ == "__main__":
    project, out, config = (
        sys.argv[1],
        sys.argv[2],
        TrainConfig.from_dict({**TrainConfig().to_dict(), **json.loads(sys.argv[3])}),
    )
    with distributed.session(config.device):
        train(load_project(project), out, config, resume="--resume" in sys.argv[4:])
        if distributed.is_main():
            print(f"Model: {out}/model.pt")
