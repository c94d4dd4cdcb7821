"""Upstream NequIP training, accelerated in place: upstream's tensor product + scatter
(``nequip.nn.TensorProductScatter``) replaced by nequip_fast's fused convolution, the way upstream's
own ``enable_OpenEquivariance`` modifier swaps in its kernel; and the layers of upstream's MLPs (the
radial networks, the readout: ``nequip.nn.mlp.ScalarLinearLayer``, ``DeepLinearMLP``, their SiLUs)
replaced by drop-ins on ``ops.matmul`` (oneDNN: torch's MKL sgemm runs at about half speed on AMD
CPUs) and ``ops.activations.silu``. The model, its parameters (the same objects), its state dict and
its numbers stay upstream's.

From Python: ``enable_nequip_fast(model)``. From an upstream config, wrap the model builder::

    training_module:
      model:
        _target_: nequip_fast.interop.accelerate.enable_nequip_fast
        model:
          _target_: nequip.model.NequIPGNNModel
          ...

Like upstream's acceleration modifiers it is not persistent: when upstream rebuilds a model to
package or compile it (``nequip-package``, ``nequip-compile``), the plain upstream model is built,
so packaged files carry no nequip_fast code.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Union

import torch

from ..allocator import keep_freed_memory
from ..ops import ConvDescriptor, TensorProductConv
from ..ops.activations import silu
from ..ops.matmul import matmul

log = logging.getLogger(__name__)


class FusedTensorProductScatter(torch.nn.Module):
    """Drop-in for upstream's ``TensorProductScatter``: ``scatter_dst(TP_uvu(x[src], edge_attr, w))``
    computed by one fused op (no per-edge output tensor)."""

    def __init__(self, old: torch.nn.Module, backend: str = "auto"):
        super().__init__()
        tp = old.tp
        self.feature_irreps_in, self.irreps_edge_attr = old.feature_irreps_in, old.irreps_edge_attr
        self.irreps_mid, self.instructions, self.model_dtype = old.irreps_mid, old.instructions, old.model_dtype
        if any(ins.connection_mode != "uvu" or not ins.has_weight for ins in tp.instructions) or tp.shared_weights:
            raise ValueError("nequip_fast accelerates uvu tensor products with per-edge weights only")
        previous = torch.get_default_dtype()
        torch.set_default_dtype(old.model_dtype)  # e3nn constants in the model's dtype, as upstream builds them
        try:
            descriptor = ConvDescriptor(tp.irreps_in1, tp.irreps_in2, tp.irreps_out,
                                        tuple((ins.i_in1, ins.i_in2, ins.i_out) for ins in tp.instructions))
            self.conv = TensorProductConv(descriptor, backend)
        finally:
            torch.set_default_dtype(previous)
        ours = [ins.path_weight for ins in self.conv.tp.instructions]
        if ours != [ins.path_weight for ins in tp.instructions]:
            raise ValueError("upstream's tensor product uses another path normalisation than nequip_fast's")
        self.tp = tp  # kept, as upstream's modifiers do: the state dict stays the same with or without the swap
        # ... so the fused op's own e3nn module (its reference backend) stays out of it
        self._register_state_dict_hook(_drop_conv_tp)
        self.register_load_state_dict_pre_hook(_fill_conv_tp)

    def forward(self, x, edge_attr, edge_weight, edge_dst, edge_src):
        edge_index = torch.stack((edge_dst, edge_src))  # row 0: receiver
        dtype = self.model_dtype
        return self.conv(x.to(dtype), edge_attr.to(dtype), edge_weight.to(dtype), edge_index)


def _drop_conv_tp(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "conv.tp.")]:
        del state_dict[key]


def _fill_conv_tp(module, state_dict, prefix, *args):
    for key, value in module.conv.tp.state_dict().items():
        state_dict.setdefault(f"{prefix}conv.tp.{key}", value)


class FastScalarLinearLayer(torch.nn.Module):
    """Drop-in for upstream's ``ScalarLinearLayer``: ``input @ (weight * alpha) (+ bias)`` on
    ``ops.matmul``, holding the same ``weight``/``bias`` Parameter objects (optimizers and EMA keep
    them) and the same non-persistent ``alpha`` buffer (the state dict keys stay upstream's)."""

    original_name = "ScalarLinearLayer"  # the class it stands for (``interop.upstream`` reads models by class name)

    def __init__(self, old: torch.nn.Module):
        super().__init__()
        self.in_features: int = old.in_features
        self.out_features: int = old.out_features
        self.weight = old.weight
        self.register_parameter("bias", old.bias)
        self.register_buffer("alpha", old.alpha, persistent=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = matmul(input, self.weight * self.alpha)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class FastDeepLinearMLP(torch.nn.Module):
    """Drop-in for upstream's ``DeepLinearMLP`` (a product of weight matrices, no bias, no
    nonlinearity): the same ``weights`` ParameterList and ``alpha`` buffer, the product on ``ops.matmul``."""

    original_name = "DeepLinearMLP"

    def __init__(self, old: torch.nn.Module):
        super().__init__()
        self.weights = old.weights
        self.register_buffer("alpha", old.alpha, persistent=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return matmul(input, torch.linalg.multi_dot(list(self.weights)) * self.alpha)


class FastSiLU(torch.nn.Module):
    """Drop-in for ``torch.nn.SiLU`` in upstream's MLPs: ``ops.activations.silu`` (one pass per derivative level)."""

    original_name = "SiLU"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return silu(input)


def _swap_mlp(function: torch.nn.Module, counts: dict[str, int]) -> None:
    """The layers of one upstream ``ScalarMLPFunction``: its ``mlp`` is a Sequential or a ``DeepLinearMLP``."""
    mlp = function.mlp
    if type(mlp).__name__ == "DeepLinearMLP":
        function.mlp = FastDeepLinearMLP(mlp)
        counts["dense"] += 1
        return
    for name, child in list(mlp.named_children()):
        kind = type(child).__name__
        if kind == "ScalarLinearLayer":
            mlp._modules[name] = FastScalarLinearLayer(child)
            counts["dense"] += 1
        elif type(child) is torch.nn.SiLU and not child.inplace:
            mlp._modules[name] = FastSiLU()
            counts["silu"] += 1
        elif kind == "ParametrizedScalarLinearLayer":  # spectral/weight norm, orthogonal: no drop-in matches them
            counts["left"] += 1


def accelerate(model: torch.nn.Module, backend: str = "auto") -> torch.nn.Module:
    """Replace every upstream ``TensorProductScatter`` in ``model``, and the dense layers and SiLUs of
    its MLPs (in place); returns ``model``."""
    counts = dict(conv=0, dense=0, silu=0, left=0)

    def swap(module: torch.nn.Module) -> None:
        for name, child in list(module.named_children()):
            kind = type(child).__name__
            if kind == "TensorProductScatter":
                module._modules[name] = FusedTensorProductScatter(child, backend)
                counts["conv"] += 1
            elif kind == "ScalarMLPFunction":
                _swap_mlp(child, counts)
            else:
                swap(child)

    swap(model)
    if counts["conv"] == 0:
        raise ValueError("no upstream TensorProductScatter found: is this an upstream NequIP 0.19 model?")
    log.info("nequip_fast: fused convolution (%s) in %d upstream tensor-product layers; ops.matmul in %d MLP "
             "layers, ops.activations.silu in %d", backend, counts["conv"], counts["dense"], counts["silu"])
    if counts["left"]:
        log.info("nequip_fast: %d parametrized MLP layers (spectral/weight norm, orthogonal) left as upstream's",
                 counts["left"])
    keep_freed_memory()  # upstream's training process repeats same-sized steps, like ours
    return model


def enable_nequip_fast(model: Union[torch.nn.Module, Mapping[str, Any]], backend: str = "auto") -> torch.nn.Module:
    """Accelerate an upstream model, or build one from its config (a mapping with ``_target_``, as in
    an upstream YAML) and accelerate it. When upstream builds for packaging or compiling (only
    persistent modifiers apply), the model is returned as built, like upstream's own accelerations."""
    if not isinstance(model, torch.nn.Module):
        from hydra.utils import get_method

        config = dict(model)
        model = get_method(config.pop("_target_"))(**config)
    from nequip.model.modify_utils import _ONLY_APPLY_PERSISTENT

    if _ONLY_APPLY_PERSISTENT.get():
        return model
    if isinstance(model, torch.nn.ModuleDict):
        for sub in model.values():
            accelerate(sub, backend)
        return model
    return accelerate(model, backend)
