"""The model card's capacity experiment: deepen an AutoencoderKL by one ResNet block per stage, as an identity.

    python models/alphavae-mini/grow_depth.py SRC_VAE DST_VAE

SRC_VAE and DST_VAE are diffusers AutoencoderKL folders. DST gets ``layers_per_block + 1``: every encoder and
decoder stage gains one ResNet block after its existing ones (in = out channels, so no shortcut), with its
second convolution zeroed, so the block adds 0 to its input and DST computes exactly SRC's function. The
script checks that on random input (max output difference 0) before it writes DST; training then moves the new
blocks off zero. For alphavae-mini: 3.93 M -> 5.29 M parameters (21.2 MB in float32).
"""

import sys

import torch
from diffusers import AutoencoderKL


def deepen(source: AutoencoderKL, seed: int = 0) -> AutoencoderKL:
    """A copy of ``source`` with one more ResNet block per encoder/decoder stage, computing the same function.

    ``seed`` fixes the random initialisation of the added blocks' norms and first convolutions.

    Raises:
        ValueError: ``source``'s weights do not map onto the deeper model (an unexpected architecture).
    """
    config = {k: v for k, v in source.config.items() if not k.startswith("_")}
    config["layers_per_block"] = source.config.layers_per_block + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the added blocks' first convolutions keep diffusers' random initialisation
        deeper = AutoencoderKL.from_config(config)
    missing, unexpected = deeper.load_state_dict(source.state_dict(), strict=False)
    if unexpected or any(".resnets." not in name for name in missing):
        raise ValueError(f"weights do not map onto the deeper model: missing {missing}, unexpected {unexpected}")
    for block in (*deeper.encoder.down_blocks, *deeper.decoder.up_blocks):
        added = block.resnets[-1]
        if added.conv_shortcut is not None:
            raise ValueError("the added ResNet block changes the channel count")
        torch.nn.init.zeros_(added.conv2.weight)
        torch.nn.init.zeros_(added.conv2.bias)
    return deeper


def main(source_dir: str, output_dir: str) -> None:
    source = AutoencoderKL.from_pretrained(source_dir).eval()
    deeper = deepen(source).eval()
    pixels = torch.rand(2, source.config.in_channels, 64, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        difference = (source(pixels, sample_posterior=False).sample
                      - deeper(pixels, sample_posterior=False).sample).abs().max().item()
    sizes = [sum(p.numel() for p in model.parameters()) for model in (source, deeper)]
    print(f"parameters {sizes[0]:,} -> {sizes[1]:,}; max output difference {difference}")
    if difference != 0.0:
        raise SystemExit("the deeper model does not reproduce the source; nothing written")
    deeper.save_pretrained(output_dir)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
