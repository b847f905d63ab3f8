"""Export the trained networks to the common SD ONNX layout, plus a parity fixture.

    python3 training/export.py --work DIR --out models/NAME [--parity DIR]

The parity fixture holds fixed inputs and the torch outputs for each graph; `deno task parity`
runs the ONNX graphs on them with onnxruntime-node and checks agreement to 1e-4.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from clip_tokenizer import ClipTokenizer
from nets import UNET_CONFIG, VAE_CONFIG, AutoencoderKL, TextEncoder, UNet2DConditionModel, count_parameters
from noise import gaussian_noise
from schedule import SCHEDULER_CONFIG
from train import TOKENIZER_DIR, load_unet, load_vae, setup_torch

OPSET = 17


class TextEncoderGraph(torch.nn.Module):
    def __init__(self, encoder: TextEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        return self.encoder(input_ids)


class VaeEncoderGraph(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        return self.vae.encode(sample)


class VaeDecoderGraph(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample)


def export_graph(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                      dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True)


def export_unet(unet, args: tuple, path: Path) -> None:
    """The UNet graph with the server's input and output names, batch and latent size dynamic."""
    export_graph(unet, args, path, ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
                 {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
                  "encoder_hidden_states": {0: "batch", 1: "sequence"}, "out_sample": {0: "batch", 2: "height", 3: "width"}})


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def tensor_entry(name: str, value: np.ndarray, blobs: list[bytes], offset: int) -> tuple[dict, int]:
    dtype = {"float32": "float32", "int32": "int32", "int64": "int64", "uint8": "uint8"}[str(value.dtype)]
    raw = np.ascontiguousarray(value).tobytes()
    blobs.append(raw)
    return {"name": name, "dtype": dtype, "shape": list(value.shape), "offset": offset, "bytes": len(raw)}, offset + len(raw)


def write_fixture(path: Path, cases: dict[str, dict[str, dict[str, np.ndarray]]], extra: dict | None = None) -> None:
    """cases: graph -> {"inputs": {...}, "outputs": {...}}; one JSON manifest + one binary file."""
    blobs: list[bytes] = []
    offset = 0
    manifest: dict = {"graphs": {}, **(extra or {})}
    for graph, io in cases.items():
        entry = {}
        for kind in ("inputs", "outputs"):
            entry[kind] = []
            for name, value in io[kind].items():
                item, offset = tensor_entry(name, value, blobs, offset)
                entry[kind].append(item)
        manifest["graphs"][graph] = entry
    path.mkdir(parents=True, exist_ok=True)
    (path / "fixture.bin").write_bytes(b"".join(blobs))
    write_json(path / "fixture.json", manifest)


@torch.no_grad()
def export(work: Path, out: Path, parity: Path | None) -> dict:
    unet, text_encoder, scaling_factor, unet_meta = load_unet(work)
    vae = load_vae(work)
    tokenizer = ClipTokenizer(TOKENIZER_DIR)
    ctx_dim = UNET_CONFIG["cross_attention_dim"]

    ids = torch.tensor([tokenizer("a large red circle on a blue background"), tokenizer("")], dtype=torch.int32)
    hidden = text_encoder(ids.long())
    sample = torch.from_numpy(gaussian_noise(7, 2 * 4 * 8 * 8).reshape(2, 4, 8, 8))
    timestep = torch.tensor([981, 1], dtype=torch.int64)
    image = torch.from_numpy(gaussian_noise(8, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)).clamp(-1, 1)

    export_graph(TextEncoderGraph(text_encoder), (ids,), out / "text_encoder/model.onnx",
                 ["input_ids"], ["last_hidden_state"], {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}})
    export_unet(unet, (sample, timestep, hidden), out / "unet/model.onnx")
    export_graph(VaeEncoderGraph(vae), (image,), out / "vae_encoder/model.onnx", ["sample"], ["latent_parameters"],
                 {"sample": {0: "batch", 2: "height", 3: "width"}, "latent_parameters": {0: "batch", 2: "height", 3: "width"}})
    export_graph(VaeDecoderGraph(vae), (sample,), out / "vae_decoder/model.onnx", ["latent_sample"], ["sample"],
                 {"latent_sample": {0: "batch", 2: "height", 3: "width"}, "sample": {0: "batch", 2: "height", 3: "width"}})

    tok_out = out / "tokenizer"
    if tok_out.resolve() != TOKENIZER_DIR.resolve():
        tok_out.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copyfile(TOKENIZER_DIR / name, tok_out / name)
    write_json(out / "scheduler/scheduler_config.json", SCHEDULER_CONFIG)
    write_json(out / "unet/config.json", {"_class_name": "UNet2DConditionModel", **UNET_CONFIG})
    vae_config = {"_class_name": "AutoencoderKL", **VAE_CONFIG, "scaling_factor": scaling_factor}
    write_json(out / "vae_encoder/config.json", vae_config)
    write_json(out / "vae_decoder/config.json", vae_config)
    write_json(out / "text_encoder/config.json", {
        "_class_name": "TextEncoder", "hidden_size": ctx_dim, "max_position_embeddings": 77,
        "vocab_size": 49408, "known_token_ids": len(text_encoder.row_of_id.unique()),
    })
    write_json(out / "model_index.json", {
        "_class_name": "OnnxStableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "requires_safety_checker": False,
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["diffusers", "OnnxRuntimeModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "OnnxRuntimeModel"],
        "vae_decoder": ["diffusers", "OnnxRuntimeModel"],
        "vae_encoder": ["diffusers", "OnnxRuntimeModel"],
    })

    if parity is not None:
        eps = unet(sample, timestep, hidden)
        write_fixture(parity, {
            "text_encoder": {"inputs": {"input_ids": ids.numpy()}, "outputs": {"last_hidden_state": hidden.numpy()}},
            "unet": {"inputs": {"sample": sample.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": hidden.numpy()},
                     "outputs": {"out_sample": eps.numpy()}},
            "vae_encoder": {"inputs": {"sample": image.numpy()}, "outputs": {"latent_parameters": vae.encode(image).numpy()}},
            "vae_decoder": {"inputs": {"latent_sample": sample.numpy()}, "outputs": {"sample": vae.decode(sample).numpy()}},
        })
    return {
        "parameters": {
            "unet": count_parameters(unet), "text_encoder": count_parameters(text_encoder),
            "vae_encoder": count_parameters(vae.encoder) + count_parameters(vae.quant_conv),
            "vae_decoder": count_parameters(vae.decoder) + count_parameters(vae.post_quant_conv),
        },
        "unet_training": unet_meta,
        "scaling_factor": scaling_factor,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parity", type=Path)
    args = parser.parse_args()
    setup_torch()
    info = export(args.work, args.out, args.parity)
    write_json(args.work / "export.json", info)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
