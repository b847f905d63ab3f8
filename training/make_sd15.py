"""Writes an SD-1.5-scale model in the common SD ONNX layout, with seeded random weights, shaped like
the exports people download:

    python3 training/make_sd15.py --out DIR [--variant fp32|fp16|scalar-timestep] [--size full|mini] [--seed N]

fp32             UNet weights as external data (unet/model.onnx + unet/model.onnx_data), per-row int64 timestep
fp16             every float input, output and weight float16 (the timestep features stay float32 inside
                 the graph, as diffusers computes them), each graph one file, as GPU exports are
scalar-timestep  fp32 with one float32 timestep for the whole batch (shape []), as some exporters write it

`--size mini` keeps SD 1.5's topology (every block, layer and the 16 transformer blocks) at a fraction of
its width, for fast tests. DIR/parity/ holds fixed inputs and the fp32 torch outputs (`deno task parity`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from export import OPSET, write_fixture, write_json
from noise import gaussian_noise
from schedule import SCHEDULER_CONFIG
from sd15_nets import SIZES, AutoencoderKL, CLIPTextModel, UNet
from train import TOKENIZER_DIR

VARIANTS = ("fp32", "fp16", "scalar-timestep")
FORMAT_VERSION = 1
EXTERNAL_MIN_BYTES = 1024
# Inputs that ONNX requires in float32 whatever the model's precision: Resize's roi and scales.
FLOAT32_INPUTS = {"Resize": (1, 2)}


class Graph(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def export(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    import inspect

    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter, whatever the version: its node names (`/down_blocks.0/.../attn1/to_q/MatMul`)
    # are what the LoRA rewrite finds, and `dynamic_axes` is its argument. torch 2.9 made the dynamo exporter
    # the default (other node names, `dynamic_shapes` instead); `dynamo=False` (torch 2.5+) keeps this one.
    accepted = inspect.signature(torch.onnx.export).parameters
    exporter = {"dynamo": False} if "dynamo" in accepted else {}
    torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                      opset_version=OPSET, do_constant_folding=True, **exporter)


def tensor_bytes(tensor: TensorProto, base: Path) -> bytes:
    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor).tobytes()
    info = {e.key: e.value for e in tensor.external_data}
    with open(base / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        return f.read(int(info["length"])) if "length" in info else f.read()


def float16_plan(graph: onnx.GraphProto) -> tuple[set[str], set[str]]:
    """Which values stay float32 in an fp16 graph: the timestep features (`/time_proj/` nodes, whose
    float outputs get a Cast to float16 for their consumers) and Resize's roi and scales."""
    keep_nodes = {n.name for n in graph.node if n.name.startswith("/time_proj/")}
    keep_values = set()
    for n in graph.node:
        if n.name in keep_nodes:
            keep_values.update(n.input)
            keep_values.update(n.output)
        for index in FLOAT32_INPUTS.get(n.op_type, ()):
            if index < len(n.input):
                keep_values.add(n.input[index])
    return keep_nodes, keep_values


def to_float16(model: onnx.ModelProto, base: Path) -> None:
    """Converts a float32 graph in place: weights, constants, casts, inputs and outputs."""
    graph = model.graph
    keep_nodes, keep_values = float16_plan(graph)
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in keep_values:
            values = np.frombuffer(tensor_bytes(tensor, base), dtype=np.float32).reshape(tuple(tensor.dims))
            tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float16), tensor.name))
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    nodes = []
    for n in graph.node:
        nodes.append(n)
        if n.name in keep_nodes:
            continue
        for attr in n.attribute:
            if n.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT \
                    and not set(n.output) & keep_values:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
    # The kept-float32 region's results, cast to float16 for everyone else.
    consumers = {i for n in graph.node if n.name not in keep_nodes for i in n.input}
    casts = {out: f"{out}/float16" for n in graph.node if n.name in keep_nodes for out in n.output if out in consumers}
    final = []
    for n in nodes:
        if n.name not in keep_nodes:
            for i, name in enumerate(n.input):
                if name in casts:
                    n.input[i] = casts[name]
        final.append(n)
        for out in n.output:
            if out in casts:
                final.append(helper.make_node("Cast", [out], [casts[out]], name=f"{n.name}/to_float16",
                                              to=TensorProto.FLOAT16))
    del graph.node[:]
    graph.node.extend(final)


def write_model(model: onnx.ModelProto, base: Path, path: Path, external: bool) -> None:
    """Saves with every initializer inline, or every one of at least 1 KiB in one `<name>_data` file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = path.name + "_data"
    with open(path.parent / data_name, "wb") if external else open(path.parent / ".none", "wb") as data:
        for tensor in model.graph.initializer:
            raw = tensor_bytes(tensor, base)
            kind = tensor.data_type
            name, dims = tensor.name, list(tensor.dims)
            tensor.Clear()
            tensor.name, tensor.data_type = name, kind
            tensor.dims.extend(dims)
            if external and len(raw) >= EXTERNAL_MIN_BYTES:
                offset = data.tell()
                data.write(raw)
                data.write(b"\0" * (-len(raw) % 64))  # aligned, as onnx's own writer leaves them
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
            else:
                tensor.raw_data = raw
    (path.parent / ".none").unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def export_part(module, args, name: str, out: Path, inputs, outputs, dynamic, variant: str, external: bool) -> None:
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        raw = Path(tmp) / "model.onnx"
        export(module, args, raw, inputs, outputs, dynamic)
        model = onnx.load(str(raw), load_external_data=False)
        if variant == "fp16":
            to_float16(model, Path(tmp))
        write_model(model, Path(tmp), out / name / "model.onnx", external)


def make(out: Path, variant: str, size: str, seed: int) -> dict:
    config = SIZES[size]
    torch.manual_seed(seed)
    unet, text_encoder, vae = UNet(config["unet"]), CLIPTextModel(config["text"]), AutoencoderKL(config["vae"])
    for m in (unet, text_encoder, vae):
        m.eval().requires_grad_(False)
    width = config["text"]["hidden_size"]
    ids = torch.full((2, 77), 49407, dtype=torch.int32)
    ids[:, 0] = 49406
    ids[0, 1:4] = torch.tensor([320, 1929, 3101])
    hidden = text_encoder(ids)
    sample = torch.from_numpy(gaussian_noise(7, 2 * 4 * 16 * 16).reshape(2, 4, 16, 16))
    timestep = torch.tensor(981.0) if variant == "scalar-timestep" else torch.tensor([981, 1], dtype=torch.int64)
    image = torch.from_numpy(gaussian_noise(8, 2 * 3 * 128 * 128).reshape(2, 3, 128, 128)).clamp(-1, 1)
    spatial = {0: "batch", 2: "height", 3: "width"}
    timings = {}

    started = time.time()
    export_part(Graph(text_encoder), (ids,), "text_encoder", out, ["input_ids"], ["last_hidden_state"],
                {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}}, variant, external=False)
    timings["text_encoder"] = time.time() - started
    started = time.time()
    export_part(unet, (sample, timestep, hidden), "unet", out, ["sample", "timestep", "encoder_hidden_states"],
                ["out_sample"], {"sample": spatial, "encoder_hidden_states": {0: "batch", 1: "sequence"},
                                 "out_sample": spatial, **({} if timestep.dim() == 0 else {"timestep": {0: "batch"}})},
                variant, external=variant != "fp16")
    timings["unet"] = time.time() - started
    started = time.time()
    export_part(Graph(vae.encode), (image,), "vae_encoder", out, ["sample"], ["latent_parameters"],
                {"sample": spatial, "latent_parameters": spatial}, variant, external=False)
    export_part(Graph(vae.decode), (sample,), "vae_decoder", out, ["latent_sample"], ["sample"],
                {"latent_sample": spatial, "sample": spatial}, variant, external=False)
    timings["vae"] = time.time() - started

    tokenizer = out / "tokenizer"
    tokenizer.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER_DIR / name, tokenizer / name)
    write_json(out / "scheduler/scheduler_config.json", SCHEDULER_CONFIG)
    write_json(out / "unet/config.json", {
        "_class_name": "UNet2DConditionModel", "sample_size": 64, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, **config["unet"],
    })
    vae_config = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
                  "sample_size": 512, "scaling_factor": 0.18215, **config["vae"]}
    write_json(out / "vae_encoder/config.json", vae_config)
    write_json(out / "vae_decoder/config.json", vae_config)
    write_json(out / "text_encoder/config.json", {"_class_name": "CLIPTextModel", "max_position_embeddings": 77,
                                                  "vocab_size": 49408, "hidden_act": "quick_gelu", **config["text"]})
    write_json(out / "model_index.json", {
        "_class_name": "OnnxStableDiffusionPipeline", "_diffusers_version": "0.30.0", "requires_safety_checker": False,
        "feature_extractor": [None, None], "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["diffusers", "OnnxRuntimeModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "OnnxRuntimeModel"], "vae_decoder": ["diffusers", "OnnxRuntimeModel"],
        "vae_encoder": ["diffusers", "OnnxRuntimeModel"],
    })
    write_fixture(out / "parity", {
        "text_encoder": {"inputs": {"input_ids": ids.numpy()}, "outputs": {"last_hidden_state": hidden.numpy()}},
        "unet": {"inputs": {"sample": sample.numpy(), "timestep": timestep.numpy().astype(np.float32 if timestep.dim() == 0 else np.int64),
                            "encoder_hidden_states": hidden.numpy()},
                 "outputs": {"out_sample": unet(sample, timestep, hidden).numpy()}},
        "vae_encoder": {"inputs": {"sample": image.numpy()}, "outputs": {"latent_parameters": vae.encode(image).numpy()}},
        "vae_decoder": {"inputs": {"latent_sample": sample.numpy()}, "outputs": {"sample": vae.decode(sample).numpy()}},
    })
    return {"variant": variant, "size": size, "seed": seed, "format": FORMAT_VERSION, "hidden_size": width,
            "parameters": {"unet": sum(p.numel() for p in unet.parameters()),
                           "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
                           "vae": sum(p.numel() for p in vae.parameters())},
            "seconds": {k: round(v, 1) for k, v in timings.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", choices=VARIANTS, default="fp32")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with torch.no_grad():
        info = make(args.out, args.variant, args.size, args.seed)
    info["seconds"]["total"] = round(time.time() - started, 1)
    write_json(args.out / "make_sd15.json", info)  # written last: its presence marks a complete model
    print(json.dumps(info))


if __name__ == "__main__":
    main()
