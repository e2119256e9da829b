"""Convert MobileNetV2 weights between timm and mv2jax (see `python convert_weights.py --help`).

python convert_weights.py --model mobilenetv2_100.ra_in1k --output ckpt/mobilenetv2_100 [--verify]
python convert_weights.py --to-timm --input ckpt/mobilenetv2_100 --output export/model.safetensors [--ema]
"""

import sys

from mv2jax.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
