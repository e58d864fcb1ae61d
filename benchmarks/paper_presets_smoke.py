"""One image preset (CIFAR-100 ResNet18) and one GLUE preset (DistilBERT) at smoke scale on a device.

Writes synthetic CIFAR-100 pickles, GLUE TSVs and a tiny random-initialised DistilBERT directory
(tests/paper_fixtures.py) under OUT/paper_assets, then runs ``tiltedsam sweep paper:NAME --scale smoke``
with ``base.run.device=DEVICE``. Usage: python benchmarks/paper_presets_smoke.py DEVICE OUT
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(device: str, out: str) -> int:
    import paper_fixtures as fx

    from tiltedsam.cli import main as cli

    root = Path(out) / "paper_assets"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cifar, glue, bert = fx.write_cifar100(root), fx.write_glue(root), fx.write_distilbert(root)
    dev = ["--set", f"base.run.device={json.dumps(device)}", "--no-report"]
    image = cli(["sweep", "paper:cifar100-resnet18", "--scale", "smoke", *dev,
                 "--set", f"out_dir={json.dumps(str(root / 'image'))}",
                 "--set", f"base.data.data_dir={json.dumps(str(cifar))}"])
    path = json.dumps(str(bert))
    text = cli(["sweep", "paper:glue-distilbert", "--scale", "smoke", *dev, "--set", 'optimizers=["sgd", "tsam"]',
                "--set", f"out_dir={json.dumps(str(root / 'glue'))}", "--set", f"base.data.data_dir={json.dumps(str(glue))}",
                "--set", f"base.model.options.path={path}", "--set", f"base.data.options.tokenizer={path}"])
    print(f"paper presets at smoke scale on {device}: image exit {image}, GLUE exit {text}")
    return int(bool(image or text))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
