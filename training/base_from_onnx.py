"""Builds DIR/lora-base.pt (what `lora.py train` needs) from the shipped ONNX graphs instead of the
base build's checkpoints, so LoRA training can start without the ~110-minute rebuild.

    python3 training/base_from_onnx.py --work DIR [--model models/tiny-sd-shapes] [--count 30000]

export.py wrote the EMA networks with torch.onnx.export(do_constant_folding=True). Most initializers
keep their torch names; constant folding renamed the others, which are mapped back through the node
that consumes them: a MatMul's is a Linear weight, transposed; an (InstanceNormalization, Mul, Add)
GroupNorm's [C, 1, 1] scale and shift are its weight and bias. A node's scope names the module it
belongs to; where the scope skips containers (the VAE encoder calls block.resnets[0] directly, so its
nodes read /encoder/resnets.0/norm1_3), the k-th module in call order whose path holds the scope's
names is taken for the suffix _k; the named initializers check that rule. Every torch parameter must
be mapped, with its exact shape, and the loaded networks must reproduce the parity fixture (the torch
outputs recorded at export) before anything is written.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from export import TextEncoderGraph, VaeDecoderGraph, VaeEncoderGraph
from nets import AutoencoderKL, TextEncoder, UNet2DConditionModel
from train import TOKENIZER_DIR, encode_latents, known_token_ids, save_checkpoint
from clip_tokenizer import ClipTokenizer

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / "models" / "tiny-sd-shapes"
PARITY = HERE.parent / "tests" / "fixtures" / "tiny-sd-shapes" / "parity"
TOLERANCE = 1e-4


def call_order(module: nn.Module, *inputs) -> list[str]:
    """Module paths in the order a forward pass first calls them."""
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _i, p=path: order.append(p) if p not in order else None)
             for path, m in module.named_modules() if path]
    with torch.no_grad():
        module(*inputs)
    for hook in hooks:
        hook.remove()
    return order


def module_of_scope(scope: str, order: list[str]) -> str:
    """'/encoder/resnets.0/norm1_3' -> the module path it stands for (see the module docstring)."""
    parts = scope.strip("/").split("/")
    path = ".".join(parts)
    if path in order:
        return path
    leaf, index = re.fullmatch(r"(.*?)(?:_(\d+))?", parts[-1]).groups()
    tokens = ".".join(parts[:-1] + [leaf]).split(".")

    def holds(candidate: str) -> bool:
        it = iter(candidate.split("."))
        return candidate.split(".")[-1] == leaf and all(t in it for t in tokens)  # ordered subsequence

    matches = [p for p in order if holds(p)]
    k = int(index or 0)
    if k >= len(matches):
        raise KeyError(f"no module for scope {scope} (candidates {matches})")
    return matches[k]


def onnx_state(graph_path: Path, module: nn.Module, *inputs) -> dict[str, torch.Tensor]:
    """The torch state (keys of module.state_dict()) held by one ONNX graph's initializers."""
    graph = onnx.load(str(graph_path)).graph
    expected = module.state_dict()
    order = call_order(module, *inputs)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state: dict[str, torch.Tensor] = {}
    renamed = 0
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        users = consumers.get(init.name, [])
        if len(users) != 1:
            raise ValueError(f"{graph_path}: {init.name} has {len(users)} consumers")
        scope, op = users[0].name.rsplit("/", 1)
        owner = module_of_scope(scope, order)
        if init.name in expected:  # kept its name: it must agree with the scope rule
            key = init.name
            if not key.startswith(owner + "."):
                raise ValueError(f"{graph_path}: {key} consumed in {scope}, resolved to {owner}")
        elif op == "MatMul":
            key, value = f"{owner}.weight", value.T
        elif op in ("Mul", "Add") and value.ndim == 3 and value.shape[1:] == (1, 1):
            key, value = f"{owner}.{'weight' if op == 'Mul' else 'bias'}", value.reshape(-1)
        else:
            raise ValueError(f"{graph_path}: cannot map {init.name} {value.shape} (consumed by {users[0].name})")
        if key not in expected or key in state:
            raise ValueError(f"{graph_path}: {init.name} -> {key}: unknown or mapped twice")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{graph_path}: {init.name} -> {key}: shape {value.shape} != {tuple(expected[key].shape)}")
        state[key] = torch.from_numpy(value.copy()).to(expected[key].dtype)
        renamed += init.name != key
    print(f"{graph_path.parent.name}: {len(state)} tensors, {renamed} renamed by constant folding", flush=True)
    return state


def require_all(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    missing = sorted(set(module.state_dict()) - set(state))
    if missing:
        raise ValueError(f"{what}: {len(missing)} torch tensors not in the graphs: {missing[:8]}")
    module.load_state_dict(state, strict=True)


def read_fixture(path: Path) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    manifest = json.loads((path / "fixture.json").read_text())
    blob = (path / "fixture.bin").read_bytes()
    cases = {}
    for graph, entry in manifest["graphs"].items():
        cases[graph] = {kind: {item["name"]: torch.from_numpy(np.frombuffer(
            blob, dtype=item["dtype"], count=int(np.prod(item["shape"])), offset=item["offset"]).reshape(item["shape"]).copy())
            for item in entry[kind]} for kind in ("inputs", "outputs")}
    return cases


def load_networks(model: Path, parity: Path):
    """(unet, text_encoder, known_ids, vae, max abs error per graph), the errors against the fixture."""
    fx = read_fixture(parity)
    te_in, unet_in = fx["text_encoder"]["inputs"], fx["unet"]["inputs"]
    enc_in, dec_in = fx["vae_encoder"]["inputs"], fx["vae_decoder"]["inputs"]

    # known_ids: the CLIP ids with an embedding row of their own, read from the row_of_id buffer.
    te_graph = onnx.load(str(model / "text_encoder" / "model.onnx")).graph
    row_of_id = next(numpy_helper.to_array(i) for i in te_graph.initializer if i.name == "encoder.row_of_id")
    known_ids = [int(i) for i in np.flatnonzero(row_of_id)]
    if known_ids != known_token_ids(ClipTokenizer(TOKENIZER_DIR)):
        raise ValueError("the graph's known ids differ from train.known_token_ids()")
    text_encoder = TextEncoder(known_ids)
    te_wrap = TextEncoderGraph(text_encoder)
    require_all(te_wrap, onnx_state(model / "text_encoder" / "model.onnx", te_wrap, te_in["input_ids"]), "text encoder")

    unet = UNet2DConditionModel()
    unet_args = (unet_in["sample"], unet_in["timestep"], unet_in["encoder_hidden_states"])
    require_all(unet, onnx_state(model / "unet" / "model.onnx", unet, *unet_args), "unet")

    vae = AutoencoderKL()
    state = onnx_state(model / "vae_encoder" / "model.onnx", VaeEncoderGraph(vae), enc_in["sample"])
    state.update(onnx_state(model / "vae_decoder" / "model.onnx", VaeDecoderGraph(vae), dec_in["latent_sample"]))
    require_all(vae, {k.removeprefix("vae."): v for k, v in state.items()}, "vae")

    errors = {}
    with torch.no_grad():
        for net in (unet, text_encoder, vae):
            net.eval()
        got = {
            "text_encoder": text_encoder(te_in["input_ids"].long()),
            "unet": unet(*unet_args),
            "vae_encoder": vae.encode(enc_in["sample"]),
            "vae_decoder": vae.decode(dec_in["latent_sample"]),
        }
    for graph, out in got.items():
        (want,) = fx[graph]["outputs"].values()
        errors[graph] = float((out - want).abs().max())
    return unet, text_encoder, known_ids, vae, errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--parity", type=Path, default=PARITY)
    parser.add_argument("--count", type=int, default=30000)
    parser.add_argument("--check-only", action="store_true", help="map and verify, write nothing")
    args = parser.parse_args()
    torch.set_num_threads(2)
    unet, text_encoder, known_ids, vae, errors = load_networks(args.model, args.parity)
    print("max |torch - fixture|:", json.dumps(errors), flush=True)
    if max(errors.values()) > TOLERANCE:
        raise SystemExit(f"parity failed (tolerance {TOLERANCE})")
    if args.check_only:
        return
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "lora-base.pt"
    latents, captions, scaling_factor = encode_latents(args.work, args.count, vae)
    shipped = json.loads((args.model / "vae_encoder" / "config.json").read_text())["scaling_factor"]
    print(f"scaling factor {scaling_factor!r}, shipped {shipped!r}, relative difference "
          f"{abs(scaling_factor - shipped) / shipped:.2e}", flush=True)
    if abs(scaling_factor - shipped) > 1e-5 * shipped:
        raise SystemExit("the latents' scaling factor differs from the shipped VAE config's")
    save_checkpoint(path, {  # the fields lora.base_file() writes
        "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "known_ids": known_ids,
        "scaling_factor": scaling_factor, "latents": latents.half(), "captions": captions,
    })
    print(path)


if __name__ == "__main__":
    main()
