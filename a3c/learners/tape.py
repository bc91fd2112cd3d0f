"""The tape learner: the update's backward pass, replayed from what the rollout's own forward passes computed.

The autograd learner recomputes the rollout with autograd for the update (ActorCritic.forward_rollout), running the
trunk and the LSTM a second time. Here each step's forward pass records the trunk's activations and the LSTM's
gates and outputs on a Tape; the update then runs the backward pass from them, from the loss's gradient at the
heads' outputs (a3c_loss_gradients): the heads, the LSTM and the trunk by hand, each layer's gradient batched over
all T x B steps. The maths is the paper's (the same gradients as autograd on the recomputed rollout, tested against
forward_rollout, and checked by the trainer at start-up for the network of each run); only the work is less.

Each kind of trunk layer the tape knows is one small class below (its forward pass, batched in torch and for one
game in numpy, and its backward pass), listed in LAYER_KINDS. A network with any other layer, another recurrent
core, or its own forward() is refused (tape_refusal), never differentiated wrongly; the autograd learner trains it.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided
from torch import Tensor, nn

from a3c.config import Config
from a3c.learners.base import Learner, Rollout, rollout_targets
from a3c.losses import LossTerms, a3c_loss_gradients
from a3c.model import ActorCritic, LSTMState, PixelConv2d, PolicyOutput


class _Layer:
    """One trunk layer on the tape. x and y: an example input and output [1, ...] from the tape's dummy pass.

    keeps_input: the backward pass reads the layer's input; keeps_output: it reads the layer's output (the next
    layer's input buffer then exists, and forward() writes into it).
    """

    keeps_input = False
    keeps_output = False
    numpy_forward = True  # forward_np exists for this layer (else a batch of one runs in torch too)

    def __init__(self, module: nn.Module, x: Tensor, y: Tensor):
        self.module = module
        self.in_shape = tuple(x.shape[1:])

    @staticmethod
    def refusal(module: nn.Module) -> str | None:
        """Why the tape cannot replay this module of its kind, or None."""
        return None

    def start(self) -> None:
        """Take the module's current weights for forward_np (after the worker's sync)."""

    def forward(self, x: Tensor, out: Tensor | None) -> Tensor:
        """The batched forward pass in torch; out (the next layer's input buffer rows) receives it when kept."""
        y = self.module(x)
        if out is not None:
            out.copy_(y)
        return y

    def forward_np(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """The forward pass for one game in numpy (3-d arrays are H x W x C); out as in forward()."""
        raise NotImplementedError

    def backward(self, grad: Tensor, inp: Tensor | None, out: Tensor | None, input_grad: bool) -> Tensor | None:
        """Set the module's parameter gradients; return the gradient at its input (None if not input_grad)."""
        raise NotImplementedError


class _Conv(_Layer):
    """nn.Conv2d (and PixelConv2d, which convolves with weight / 255): backward by torch's convolution_backward;
    for one game, im2col in numpy: one strided copy of every output pixel's window and one OpenBLAS product, into
    buffers allocated once (batch-1 convolutions in torch pay a set-up cost per call larger than their arithmetic)."""

    keeps_input = True

    def __init__(self, module: nn.Conv2d, x: Tensor, y: Tensor):
        super().__init__(module, x, y)
        self.scale = getattr(module, "weight_scale", 1.0)
        self.numpy_forward = module.groups == 1 and module.dilation == (1, 1)
        (_, channels, height, width), (_, out_channels, out_h, out_w) = x.shape, y.shape
        (pad_h, pad_w), (k_h, k_w), (s_h, s_w) = module.padding, module.kernel_size, module.stride
        padded = np.zeros((height + 2 * pad_h, width + 2 * pad_w, channels), np.float32)
        rows, cols, chans = padded.strides
        self.interior = padded[pad_h : pad_h + height, pad_w : pad_w + width]
        # every output pixel's k_h x k_w x C window of the padded input, as a view
        self.windows = as_strided(
            padded, (out_h, out_w, k_h, k_w, channels), (s_h * rows, s_w * cols, rows, cols, chans)
        )
        self.columns = np.empty((out_h, out_w, k_h, k_w, channels), np.float32)
        self.weight = np.empty((k_h * k_w * channels, out_channels), np.float32)
        self.out = np.empty((out_h, out_w, out_channels), np.float32)
        self.bias: np.ndarray | None = None

    @staticmethod
    def refusal(module: nn.Module) -> str | None:
        if module.bias is None:
            return "a convolution without bias"
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return f"a convolution with padding {module.padding!r} / padding_mode {module.padding_mode!r}"
        return None

    def start(self) -> None:
        with torch.no_grad():
            weight = self.module.weight * self.scale
            self.weight[:] = weight.permute(2, 3, 1, 0).reshape(self.weight.shape).numpy()
            self.bias = self.module.bias.detach().numpy()

    def forward_np(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        self.interior[...] = x
        np.copyto(self.columns, self.windows)
        y = self.out
        np.matmul(self.columns.reshape(y.shape[0] * y.shape[1], -1), self.weight, out=y.reshape(-1, y.shape[2]))
        y += self.bias
        if out is not None:
            out.reshape(y.shape)[...] = y
        return y

    def backward(self, grad: Tensor, inp: Tensor | None, out: Tensor | None, input_grad: bool) -> Tensor | None:
        conv, scale = self.module, self.scale
        weight = conv.weight
        grad = grad.contiguous(memory_format=memory_format(inp))
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad,
            inp,
            weight * scale if scale != 1.0 else weight,
            [weight.shape[0]],
            conv.stride,
            conv.padding,
            conv.dilation,
            False,
            [0, 0],
            conv.groups,
            [input_grad, True, True],
        )
        _set_grad(conv.weight, grad_weight * scale if scale != 1.0 else grad_weight)
        _set_grad(conv.bias, grad_bias)
        return grad_input


class _Linear(_Layer):
    """nn.Linear with a bias."""

    keeps_input = True

    def __init__(self, module: nn.Linear, x: Tensor, y: Tensor):
        super().__init__(module, x, y)
        self.out = np.empty((1, module.out_features), np.float32)
        self.weight_t: np.ndarray | None = None
        self.bias: np.ndarray | None = None

    @staticmethod
    def refusal(module: nn.Module) -> str | None:
        return "a linear layer without bias" if module.bias is None else None

    def start(self) -> None:
        self.weight_t = self.module.weight.detach().numpy().T  # views of the parameters: sync copies into them
        self.bias = self.module.bias.detach().numpy()

    def forward_np(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        y = np.matmul(x.reshape(1, -1), self.weight_t, out=self.out)
        y += self.bias
        if out is not None:
            out.reshape(y.shape)[...] = y
        return y

    def backward(self, grad: Tensor, inp: Tensor | None, out: Tensor | None, input_grad: bool) -> Tensor | None:
        _set_grad(self.module.weight, grad.t() @ inp)
        _set_grad(self.module.bias, grad.sum(0))
        return grad @ self.module.weight if input_grad else None


class _Flatten(_Layer):
    """nn.Flatten of [N, C, H, W] (or [N, F]) to [N, F]: torch's C x H x W order."""

    @staticmethod
    def refusal(module: nn.Module) -> str | None:
        return None if (module.start_dim, module.end_dim) == (1, -1) else "a Flatten other than Flatten(1, -1)"

    def forward_np(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        y = (x.transpose(2, 0, 1) if x.ndim == 3 else x).reshape(1, -1)
        if out is not None:
            out.reshape(y.shape)[...] = y
        return y

    def backward(self, grad: Tensor, inp: Tensor | None, out: Tensor | None, input_grad: bool) -> Tensor | None:
        return grad.reshape(grad.shape[0], *self.in_shape)


class _Activation(_Layer):
    """An elementwise activation whose derivative is a function of its output, which the tape keeps: its forward
    passes always get the output buffer (out is never None) and write into it."""

    keeps_output = True

    def __init__(self, module: nn.Module, x: Tensor, y: Tensor):
        super().__init__(module, x, y)
        size = y.numel()
        self.zeros = np.zeros(size, np.float32)  # np.minimum / maximum against an array of zeros beat a scalar 0
        self.scratch = np.empty(size, np.float32)

    def _zeros(self, x: np.ndarray) -> np.ndarray:
        return self.zeros[: x.size].reshape(x.shape)


class _ReLU(_Activation):
    def forward(self, x: Tensor, out: Tensor | None) -> Tensor:
        return torch.clamp_min(x, 0.0, out=out)

    def forward_np(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        return np.maximum(x, self._zeros(x), out=out.reshape(x.shape))

    def backward(self, grad: Tensor, inp: Tensor | None, out: Tensor | None, input_grad: bool) -> Tensor | None:
        return torch.ops.aten.threshold_backward(grad, out, 0.0)


class _ELU(_Activation):
    @staticmethod
    def refusal(module: nn.Module) -> str | None:
        # With alpha < 0 the output no longer tells the derivative (torch refuses elu_backward from the result).
        return f"an ELU with alpha {module.alpha} < 0" if module.alpha < 0 else None

    def forward(self, x: Tensor, out: Tensor | None) -> Tensor:
        return torch.ops.aten.elu.out(x, self.module.alpha, 1.0, 1.0, out=out)

    def forward_np(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        # max(x, 0) + alpha * (exp(min(x, 0)) - 1): numpy vectorizes float32 exp with AVX2, expm1 only with AVX-512.
        # exp - 1 is within one float32 step at 1 of expm1, and exactly 0 where x > 0, so positive outputs stay x.
        out, zeros = out.reshape(x.shape), self._zeros(x)
        negative = self.scratch[: x.size].reshape(x.shape)
        np.exp(np.minimum(x, zeros, out=negative), out=negative)
        negative -= 1.0
        if self.module.alpha != 1.0:
            negative *= self.module.alpha
        return np.add(np.maximum(x, zeros, out=out), negative, out=out)

    def backward(self, grad: Tensor, inp: Tensor | None, out: Tensor | None, input_grad: bool) -> Tensor | None:
        return torch.ops.aten.elu_backward(grad, self.module.alpha, 1.0, 1.0, True, out)


class _Tanh(_Activation):
    def forward(self, x: Tensor, out: Tensor | None) -> Tensor:
        return torch.tanh(x, out=out)

    def forward_np(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        return np.tanh(x, out=out.reshape(x.shape))

    def backward(self, grad: Tensor, inp: Tensor | None, out: Tensor | None, input_grad: bool) -> Tensor | None:
        return torch.ops.aten.tanh_backward(grad, out)


# The trunk layers the tape can replay, by exact type: a subclass may compute something else in its forward().
# Adding a kind means one class above, one entry here, and one case in tests/test_learners.py's LAYER_CASES.
LAYER_KINDS: dict[type[nn.Module], type[_Layer]] = {
    nn.Conv2d: _Conv,
    PixelConv2d: _Conv,
    nn.Linear: _Linear,
    nn.Flatten: _Flatten,
    nn.ReLU: _ReLU,
    nn.ELU: _ELU,
    nn.Tanh: _Tanh,
}
_WEIGHTED = (_Conv, _Linear)
# What the tape replays of ActorCritic: these methods must be its own, not a subclass's.
_REPLAYED_METHODS = ("forward", "features", "trunk_input", "lstm_step", "heads", "forward_rollout", "initial_state")


def _trunk_modules(sequence: nn.Sequential) -> list[nn.Module]:
    """The layers an nn.Sequential runs, in order, nested Sequentials flattened (a module used twice, twice)."""
    layers: list[nn.Module] = []
    for module in sequence:
        layers += _trunk_modules(module) if type(module) is nn.Sequential else [module]
    return layers


def tape_refusal(model: nn.Module) -> str | None:
    """Why the tape cannot replay this network (it is not ActorCritic's own structure on the CPU in float32, or a
    trunk layer has no class in LAYER_KINDS), or None. The trainer's start-up check then also compares the tape's
    outputs and gradients with autograd's on a dummy rollout (a3c/learners/check.py)."""
    if not isinstance(model, ActorCritic):
        return f"{type(model).__name__} is not an ActorCritic"
    for name in _REPLAYED_METHODS:
        if getattr(type(model), name) is not getattr(ActorCritic, name):
            return f"{type(model).__name__}.{name} replaces ActorCritic's, which is what the tape replays"
    if type(model.trunk) is not nn.Sequential:
        return f"the trunk is a {type(model.trunk).__name__}, not an nn.Sequential of layers run in order"
    lstm = model.lstm
    if type(lstm) is not nn.LSTM:
        return f"the recurrent core is a {type(lstm).__name__}; the tape knows a single-layer nn.LSTM"
    if lstm.num_layers != 1 or lstm.proj_size != 0 or lstm.bidirectional or not lstm.bias or lstm.batch_first:
        return (
            f"the LSTM has num_layers={lstm.num_layers}, proj_size={lstm.proj_size}, bidirectional="
            f"{lstm.bidirectional}, bias={lstm.bias}, batch_first={lstm.batch_first}; the tape knows one layer, "
            "no projection, one direction, with biases"
        )
    for head in ("policy", "value"):
        layer = getattr(model, head)
        if type(layer) is not nn.Linear or layer.bias is None:
            return f"the {head} head is not an nn.Linear with a bias"
    modules = _trunk_modules(model.trunk)
    if len({id(m) for m in modules}) != len(modules):
        return "a trunk layer is used twice (the tape sets each parameter's gradient once, it would not add them)"
    owned = [id(p) for m in (*modules, lstm, model.policy, model.value) for p in m.parameters()]
    if len(set(owned)) != len(owned):
        return "two layers share a parameter (the tape sets each gradient once, it would not add them)"
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
            return f"{type(module).__name__} has hooks (weight_norm and the like), which the tape does not run"
    for i, module in enumerate(modules):
        kind = LAYER_KINDS.get(type(module))
        if kind is None:
            known = ", ".join(k.__name__ for k in LAYER_KINDS)
            return f"trunk layer {i} is {module}, which has no replayed backward pass (the tape knows {known})"
        why = kind.refusal(module)
        if why is not None:
            return f"trunk layer {i} is {why}"
        if i == 0 and kind not in _WEIGHTED:
            return f"trunk layer 0 is {module}; the tape needs a convolution or linear layer first"
    for p in model.parameters():
        if p.device.type != "cpu" or p.dtype != torch.float32:
            return f"the tape runs in float32 on the CPU, and a parameter is {p.dtype} on {p.device}"
    return None


class Tape(Learner):
    """The tape learner: buffers for one rollout of `steps` x `batch` forward passes, and the backward pass that
    reads them. Raises TypeError for a network tape_refusal refuses.

    inputs[i] is what trunk layer i received (float32 [T*B, ...], kept only where the backward pass needs it: the
    input of a conv / linear layer, the output of an activation); hiddens and cells (float32 [T, B, hidden]) are the
    LSTM's outputs at each step, before any reset zeroes the carried state, and gates (float32 [T, B, 4 * hidden])
    its gates after their activations (i, f, g, o: torch's order).
    """

    name = "tape"

    def __init__(self, model: ActorCritic, steps: int, batch: int):
        why = tape_refusal(model)
        if why is not None:
            raise TypeError(f"no replayed backward pass for this network: {why}")
        super().__init__(model, steps, batch)
        modules = _trunk_modules(model.trunk)
        rows = steps * batch
        with torch.no_grad():  # one dummy pass for each layer's input shape and memory format
            x = model.trunk_input(torch.zeros(1, *model.obs_shape, dtype=torch.uint8 if model.is_image else None))
            examples = []
            for module in modules:
                examples.append(x)
                x = module(x)
        examples.append(x)  # each layer's input, then the trunk's output
        for i, (module, x) in enumerate(zip(modules, examples, strict=False)):
            if type(module) is nn.Linear and x.dim() != 2:
                raise TypeError(f"no replayed backward pass for trunk layer {i}: a Linear on a {x.dim()}-d input")
        self.layers = [
            LAYER_KINDS[type(m)](m, x, y) for m, x, y in zip(modules, examples[:-1], examples[1:], strict=True)
        ]
        # Buffer i (layer i's input) is kept when layer i reads it or layer i-1 writes its output there; the
        # trunk's output (the LSTM's input) always.
        keep = [
            layer.keeps_input or (i > 0 and self.layers[i - 1].keeps_output) for i, layer in enumerate(self.layers)
        ] + [True]
        # Every buffer has one step more than the rollout: step(steps, ...) is the bootstrap value's forward pass
        # after the rollout's last step, which the backward pass does not read.
        self._buffers: list[Tensor | None] = [
            torch.empty((rows + batch, *s.shape[1:])).contiguous(memory_format=memory_format(s)) if kept else None
            for s, kept in zip(examples, keep, strict=True)
        ]
        self.inputs = [None if b is None else b[:rows] for b in self._buffers]
        hidden = model.hidden_size
        # The backward pass reads the gates from here instead of recomputing them (two products of T x B rows).
        hiddens, cells, gates = (torch.zeros(steps + 1, batch, size) for size in (hidden, hidden, 4 * hidden))
        self.hiddens, self.cells, self.gates = hiddens[:steps], cells[:steps], gates[:steps]
        self._hiddens_np, self._cells_np, self._gates_np = hiddens.numpy(), cells.numpy(), gates.numpy()
        # The LSTM's two weight matrices side by side, and its two biases summed: one matrix product per step
        # instead of two (at batch 1 the step is bound by reading the weights). Likewise the policy and value heads,
        # stacked into one layer. All filled by start().
        lstm = model.lstm
        self.lstm_weight = torch.empty(4 * hidden, lstm.input_size + hidden)
        self.lstm_bias = torch.empty(4 * hidden)
        self._lstm_bias_np = self.lstm_bias.numpy()
        self._gate_scale = np.full(4 * hidden, 0.5, np.float32)
        self._gate_scale[2 * hidden : 3 * hidden] = 1.0
        self._gate_shift = 1.0 - self._gate_scale
        # For a batch of one the product goes through numpy's OpenBLAS matrix-vector product, faster there than
        # torch's at batch 1 (benchmarks/throughput.py); for larger batches torch keeps it.
        self._lstm_input_np = np.empty((batch, lstm.input_size + hidden), np.float32)  # [x, h] side by side
        self._lstm_weight_t_np = self.lstm_weight.numpy().T
        self.heads_weight = torch.empty(model.num_actions + 1, hidden)
        self.heads_bias = torch.empty(model.num_actions + 1)
        # One game per worker (the paper's): the trunk's forward pass in numpy, where torch's per-op dispatch costs
        # more than the arithmetic. Numpy views of the buffers, one row per step; 4-d ones are channels_last, so
        # H x W x C in memory.
        self.numpy_trunk = batch == 1 and all(layer.numpy_forward for layer in self.layers)
        self._kept_np = [
            None if b is None else (b.permute(0, 2, 3, 1) if b.dim() == 4 else b).numpy() for b in self._buffers
        ]
        assert all(k is None or k.flags.c_contiguous for k in self._kept_np), "rows written through reshape() views"

    def start(self) -> object:
        """Begin a rollout: take the model's current LSTM, head and trunk weights (after the worker's sync)."""
        model = self.model
        lstm = model.lstm
        with torch.no_grad():
            torch.cat((lstm.weight_ih_l0, lstm.weight_hh_l0), 1, out=self.lstm_weight)
            torch.add(lstm.bias_ih_l0, lstm.bias_hh_l0, out=self.lstm_bias)
            if self.batch == 1:  # the numpy step's tanh(x / 2) for the sigmoid gates (i, f, o)
                hidden = model.hidden_size
                for rows in (slice(0, 2 * hidden), slice(3 * hidden, None)):
                    self.lstm_weight[rows] *= 0.5
                    self.lstm_bias[rows] *= 0.5
            torch.cat((model.policy.weight, model.value.weight), out=self.heads_weight)
            torch.cat((model.policy.bias, model.value.bias), out=self.heads_bias)
        if self.numpy_trunk:
            for layer in self.layers:
                layer.start()
        return self._new_recording()

    def step(self, t: int, obs: Tensor, state: LSTMState) -> PolicyOutput:
        """ActorCritic.forward for step t (obs [B, *obs_shape]), recording what the backward pass needs; the
        LSTM and the heads use the weights taken at start(). t = steps is the pass after the rollout (for the
        bootstrap value): it has buffers of its own, which the backward pass does not read."""
        x = self._trunk_step_np(t, obs) if self.numpy_trunk else self._trunk_step(t, obs)
        h, c = self._lstm_step(t, x, state)
        heads = torch.addmm(self.heads_bias, h, self.heads_weight.t())
        return PolicyOutput(heads[:, :-1], heads[:, -1], (h, c))

    def _trunk_step(self, t: int, obs: Tensor) -> Tensor:
        rows = slice(t * self.batch, (t + 1) * self.batch)
        x = self.model.trunk_input(obs)
        self._buffers[0][rows].copy_(x)
        for layer, kept in zip(self.layers, self._buffers[1:], strict=True):
            x = layer.forward(x, None if kept is None else kept[rows])
        return x

    def _trunk_step_np(self, t: int, obs: Tensor) -> Tensor:
        """The trunk's output [1, F] for obs [1, *obs_shape] in numpy, recording step t's kept activations."""
        kept = self._kept_np
        x = kept[0][t]
        obs_np = obs.numpy()[0]
        np.copyto(x, obs_np.transpose(1, 2, 0) if self.model.is_image else obs_np, casting="unsafe")
        if self.model.standardize:  # standardize_frames: mean 0, std 1 (torch.std_mean's, with N - 1), std >= 1
            x -= x.mean(dtype=np.float32)
            flat = x.reshape(-1)
            x /= max(np.sqrt(np.dot(flat, flat) / np.float32(flat.size - 1)), np.float32(1.0))
        for layer, out in zip(self.layers, kept[1:], strict=True):
            x = layer.forward_np(x, None if out is None else out[t])
        return torch.from_numpy(kept[-1][t : t + 1])

    def _lstm_step(self, t: int, x: Tensor, state: LSTMState) -> LSTMState:
        """ActorCritic.lstm_step (torch.lstm_cell's maths, its gate order i, f, g, o) from start()'s weights; the
        activated gates, the new hidden and cell states are recorded at step t."""
        hidden = self.model.hidden_size
        gates_np = self._gates_np[t]
        if self.batch == 1:
            # The step in numpy, whose ops on a few hundred numbers cost less than torch's dispatch. One tanh serves
            # all four gates, sigmoid(x) = (1 + tanh(x / 2)) / 2, the halving folded into start()'s weights.
            features = x.shape[1]
            self._lstm_input_np[:, :features] = x.numpy()
            self._lstm_input_np[:, features:] = state[0].numpy()
            np.matmul(self._lstm_input_np, self._lstm_weight_t_np, out=gates_np)
            np.add(gates_np, self._lstm_bias_np, out=gates_np)
            np.tanh(gates_np, out=gates_np)
            np.multiply(gates_np, self._gate_scale, out=gates_np)  # (1 + tanh) / 2 for i, f, o; g as it is
            np.add(gates_np, self._gate_shift, out=gates_np)
            i, f = gates_np[:, :hidden], gates_np[:, hidden : 2 * hidden]  # plain slices: cheaper than np.split
            g, o = gates_np[:, 2 * hidden : 3 * hidden], gates_np[:, 3 * hidden :]
            c = f * state[1].numpy()
            c += i * g
            h = np.tanh(c)
            h *= o
            self._hiddens_np[t] = h
            self._cells_np[t] = c
            return torch.from_numpy(h), torch.from_numpy(c)
        gates = torch.from_numpy(gates_np)
        torch.addmm(self.lstm_bias, torch.cat((x, state[0]), 1), self.lstm_weight.t(), out=gates)
        gates[:, 2 * hidden : 3 * hidden].tanh_()
        gates[:, : 2 * hidden].sigmoid_()
        gates[:, 3 * hidden :].sigmoid_()
        i, f, g, o = gates.chunk(4, 1)
        c = torch.addcmul(f * state[1], i, g)
        h = o * c.tanh()
        self._hiddens_np[t] = h.numpy()
        self._cells_np[t] = c.numpy()
        return h, c

    def heads(self) -> tuple[np.ndarray, np.ndarray]:
        """The recorded steps' logits float32 [T, B, A] and values [T, B], from the LSTM outputs on the tape."""
        steps, batch, hidden = self.hiddens.shape
        heads_weight, heads_bias = self.heads_weight.numpy(), self.heads_bias.numpy()
        out = self._hiddens_np[:steps].reshape(steps * batch, hidden) @ heads_weight.T + heads_bias
        return out[:, :-1].reshape(steps, batch, -1), out[:, -1].reshape(steps, batch)

    def backward(self, rollout: Rollout, cfg: Config) -> LossTerms:
        """The loss's gradient by hand (a3c_loss_gradients), then the backward pass replayed from the tape."""
        self._check_recording(rollout)
        logits, values_np = self.heads()
        targets = rollout_targets(rollout, torch.from_numpy(values_np), cfg.gamma, cfg.gae_lambda)
        gradients = a3c_loss_gradients(
            logits, values_np, rollout.actions.numpy(), targets, cfg.entropy_coef, cfg.value_loss_coef
        )
        self.backward_from_heads(gradients.logits, gradients.values, rollout.state, rollout.resets)
        return gradients.terms

    def backward_from_heads(
        self, grad_logits: np.ndarray, grad_values: np.ndarray, state: LSTMState, resets: Tensor
    ) -> None:
        """Set .grad of every parameter from the loss's gradient at the heads' outputs.

        grad_logits float32 [T, B, A] and grad_values [T, B] (a3c_loss_gradients); state: the LSTM state before
        step 0; resets float32 [T(+1), B], 1 where an episode began at step t (the carried state was zeroed there,
        so no gradient flows past it).
        """
        steps, batch, hidden = self.hiddens.shape
        grad_heads = np.concatenate((grad_logits, grad_values[..., None]), -1).reshape(steps * batch, -1)
        hiddens = self._hiddens_np[:steps].reshape(steps * batch, hidden)
        # The policy's and the value's gradients are slices of one product: distinct memory, each laid out like
        # its parameter.
        grad_weight = torch.from_numpy(grad_heads.T @ hiddens)
        grad_bias = torch.from_numpy(grad_heads.sum(0))
        model = self.model
        _set_grad(model.policy.weight, grad_weight[:-1])
        _set_grad(model.value.weight, grad_weight[-1:])
        _set_grad(model.policy.bias, grad_bias[:-1])
        _set_grad(model.value.bias, grad_bias[-1:])
        grad_hiddens = torch.from_numpy(grad_heads @ self.heads_weight.numpy()).view(steps, batch, hidden)
        with torch.no_grad():
            grad = self._lstm_backward(grad_hiddens, state, resets[: self.steps])
            for i in range(len(self.layers) - 1, -1, -1):  # the trunk, batched over all recorded rows
                grad = self.layers[i].backward(grad, self.inputs[i], self.inputs[i + 1], input_grad=i > 0)

    def _lstm_backward(self, grad_hiddens: Tensor, state: LSTMState, resets: Tensor) -> Tensor:
        """Backpropagation through time over the recorded steps; returns the gradient at the LSTM's input [T*B, F]."""
        lstm = self.model.lstm
        steps, batch, hidden = self.hiddens.shape
        keep = (1.0 - resets).unsqueeze(-1)  # [T, B, 1]
        # The state each step started from, zeroed where an episode began.
        h_prev = torch.cat((state[0].unsqueeze(0), self.hiddens[:-1])) * keep
        c_prev = torch.cat((state[1].unsqueeze(0), self.cells[:-1])) * keep
        i, f, g, o = self.gates.view(steps, batch, 4, hidden).unbind(2)
        tanh_c = self.cells.tanh()
        # d(gate pre-activations) = [dc, dc, dc, dh] * factors; dc gains dh * o * (1 - tanh(c)^2) at each step.
        factors = torch.stack((g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)), 2)
        dc_from_dh = o * (1 - tanh_c * tanh_c)
        # The recursion is T small steps: in numpy, whose ops on a few hundred numbers cost a fraction of torch's
        # dispatch. For a batch of one its product goes through OpenBLAS too, as in _lstm_step.
        weight_hh = lstm.weight_hh_l0.detach()
        weight_hh_np = weight_hh.numpy()
        grad_gates = torch.empty(steps, batch, 4, hidden)
        grad_gates_np, factors_np, f_np = grad_gates.numpy(), factors.numpy(), f.numpy()
        grad_hiddens_np, dc_from_dh_np, keep_np = grad_hiddens.numpy(), dc_from_dh.numpy(), keep.numpy()
        dh_next = np.zeros((batch, hidden), np.float32)
        dc_next = np.zeros((batch, hidden), np.float32)
        dh, dc = np.empty_like(dh_next), np.empty_like(dc_next)
        has_reset = resets.any(1).tolist()
        for t in range(steps - 1, -1, -1):
            np.add(grad_hiddens_np[t], dh_next, out=dh)
            np.multiply(dh, dc_from_dh_np[t], out=dc)
            dc += dc_next
            out = grad_gates_np[t]  # [B, 4, hidden]
            np.multiply(dc[:, None], factors_np[t, :, :3], out=out[:, :3])
            np.multiply(dh, factors_np[t, :, 3], out=out[:, 3])
            if t == 0:
                break  # the carried-in state is not a parameter
            if batch == 1:
                np.matmul(out.reshape(1, -1), weight_hh_np, out=dh_next)
            else:
                torch.mm(grad_gates[t].view(batch, -1), weight_hh, out=torch.from_numpy(dh_next))
            np.multiply(dc, f_np[t], out=dc_next)
            if has_reset[t]:
                dh_next *= keep_np[t]
                dc_next *= keep_np[t]
        grad_gates = grad_gates.view(steps * batch, 4 * hidden)
        x = self.inputs[-1]
        _set_grad(lstm.weight_ih_l0, grad_gates.t() @ x)
        _set_grad(lstm.weight_hh_l0, grad_gates.t() @ h_prev.view(-1, hidden))
        _set_grad(lstm.bias_ih_l0, grad_gates.sum(0))
        _set_grad(lstm.bias_hh_l0, grad_gates.sum(0))  # a tensor of its own: clipping scales each grad in place
        return grad_gates @ lstm.weight_ih_l0


def memory_format(x: Tensor) -> torch.memory_format:
    """channels_last for a 4-d tensor laid out so, else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _set_grad(param: nn.Parameter, grad: Tensor) -> None:
    """param.grad = grad, laid out like param (autograd's guarantee, which the fused Adam step relies on: it walks
    parameter and gradient by memory offset, so a channels_last weight needs a channels_last gradient)."""
    if grad.stride() != param.stride():
        grad = torch.empty_like(param).copy_(grad)
    param.grad = grad
