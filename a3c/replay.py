"""The update's backward pass, replayed from what the rollout's own forward passes computed.

The rollout runs under inference mode, one batch-1 forward pass per step. Recomputing it with autograd for the
update (ActorCritic.forward_rollout) ran the trunk and the LSTM a second time: Pong's update took 601 us per agent
step with two workers, 495-522 replayed (README, Benchmarks). Here each step's forward pass records the trunk's
activations and the LSTM's gates and outputs on a Tape; the update then runs the backward pass from them, from the
loss's gradient at the heads' outputs (a3c_loss_gradients): the heads, the LSTM and the trunk by hand, each layer's
gradient batched over all T x B steps. The maths is the paper's (the same gradients as autograd on the
recomputed rollout, tested against forward_rollout); only the work is less.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided
from torch import Tensor, nn

from a3c.model import ActorCritic, LSTMState, PolicyOutput

_ACTIVATIONS = (nn.ELU, nn.ReLU, nn.Tanh)
_WEIGHTED = (nn.Conv2d, nn.Linear)


def _trunk_layers(model: ActorCritic) -> list[nn.Module]:
    """The trunk's layers in forward order (nested Sequentials flattened); raises TypeError for a layer whose
    backward pass is not written here."""
    layers = [m for m in model.trunk.modules() if not isinstance(m, nn.Sequential)]
    for i, layer in enumerate(layers):
        supported = isinstance(layer, (*_ACTIVATIONS, *_WEIGHTED, nn.Flatten))
        if isinstance(layer, _WEIGHTED):
            supported = layer.bias is not None
        if isinstance(layer, nn.Conv2d):
            supported &= layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
        if isinstance(layer, nn.Flatten):
            supported &= i > 0 and isinstance(layers[i - 1], _ACTIVATIONS)
        if not supported or (i == 0 and not isinstance(layer, _WEIGHTED)):
            raise TypeError(f"no replayed backward pass for trunk layer {i}: {layer}")
    return layers


class Tape:
    """Buffers for one rollout of `steps` x `batch` forward passes, and the backward pass that reads them.

    inputs[i] is what trunk layer i received (float32 [T*B, ...], kept only where the backward pass needs it: the
    input of a conv / linear layer, the output of an activation); hiddens and cells (float32 [T, B, hidden]) are the
    LSTM's outputs at each step, before any reset zeroes the carried state, and gates (float32 [T, B, 4 * hidden])
    its gates after their activations (i, f, g, o: torch's order).
    """

    def __init__(self, model: ActorCritic, steps: int, batch: int):
        self.model = model
        self.steps, self.batch = steps, batch
        self.layers = _trunk_layers(model)
        rows = steps * batch
        with torch.no_grad():  # one dummy pass for each layer's input shape and memory format
            x = model.trunk_input(torch.zeros(1, *model.obs_shape, dtype=torch.uint8 if model.is_image else None))
            examples = []
            for layer in self.layers:
                examples.append(x)
                x = layer(x)
        examples.append(x)  # each layer's input, then the trunk's output
        keep = [self._needs_input(i) for i in range(len(self.layers))] + [True]  # the trunk's output: the LSTM's x
        # Every buffer has one step more than the rollout: step(steps, ...) is the bootstrap value's forward pass
        # after the rollout's last step, which the backward pass does not read.
        self._buffers: list[Tensor | None] = [
            torch.empty((rows + batch, *s.shape[1:])).contiguous(memory_format=_format(s)) if kept else None
            for s, kept in zip(examples, keep, strict=True)
        ]
        self.inputs = [None if b is None else b[:rows] for b in self._buffers]
        hidden = model.hidden_size
        # The backward pass reads the gates from here instead of recomputing them (two products of T x B rows).
        hiddens, cells, gates = (torch.zeros(steps + 1, batch, size) for size in (hidden, hidden, 4 * hidden))
        self.hiddens, self.cells, self.gates = hiddens[:steps], cells[:steps], gates[:steps]
        self._hiddens_np, self._cells_np, self._gates_np = hiddens.numpy(), cells.numpy(), gates.numpy()
        # The LSTM's two weight matrices side by side, and its two biases summed: one matrix product per step
        # instead of two (the step reads 2 MB of weights for a batch of one; about a quarter faster). Likewise the
        # policy and value heads, stacked into one layer. All filled by start().
        lstm = model.lstm
        self.lstm_weight = torch.empty(4 * hidden, lstm.input_size + hidden)
        self.lstm_bias = torch.empty(4 * hidden)
        self._lstm_bias_np = self.lstm_bias.numpy()
        self._gate_scale = np.full(4 * hidden, 0.5, np.float32)
        self._gate_scale[2 * hidden : 3 * hidden] = 1.0
        self._gate_shift = 1.0 - self._gate_scale
        # For a batch of one the product goes through numpy: OpenBLAS's matrix-vector product takes 34 us where
        # torch's (MKL, on this AMD CPU) takes 50-60, and up to 2x less when the weights have left the cache between
        # steps, as they do in a worker. For larger batches OpenBLAS is the slower one; torch keeps those.
        self._lstm_input_np = np.empty((batch, lstm.input_size + hidden), np.float32)  # [x, h] side by side
        self._lstm_weight_t_np = self.lstm_weight.numpy().T
        self.heads_weight = torch.empty(model.num_actions + 1, hidden)
        self.heads_bias = torch.empty(model.num_actions + 1)
        plain_convs = all(c.groups == 1 and c.dilation == (1, 1) for c in self.layers if isinstance(c, nn.Conv2d))
        self.trunk_np = _NumpyTrunk(self, examples) if batch == 1 and plain_convs else None

    def start(self) -> None:
        """Begin a rollout: take the model's current LSTM and head weights (after the worker's sync) for step()."""
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
        if self.trunk_np is not None:
            self.trunk_np.start()

    def _needs_input(self, i: int) -> bool:
        """Layer i's input is needed by its own backward (conv / linear) or is an activation's output."""
        if isinstance(self.layers[i], _WEIGHTED):
            return True
        return i > 0 and isinstance(self.layers[i - 1], _ACTIVATIONS)

    def step(self, t: int, obs: Tensor, state: LSTMState) -> PolicyOutput:
        """ActorCritic.forward for step t (obs [B, *obs_shape]), recording what the backward pass needs; the
        LSTM and the heads use the weights taken at start(). t = steps is the pass after the rollout (for the
        bootstrap value): it has buffers of its own, which the backward pass does not read."""
        rows = slice(t * self.batch, (t + 1) * self.batch)
        if self.trunk_np is not None:
            x = self.trunk_np.forward(t, obs)
        else:
            x = self.model.trunk_input(obs)
            self._buffers[0][rows].copy_(x)
            for i, layer in enumerate(self.layers):
                kept = self._buffers[i + 1]
                if kept is not None and isinstance(layer, _ACTIVATIONS):
                    x = _activation_into(layer, x, kept[rows])  # written in place: no copy
                else:
                    x = layer(x)
                    if kept is not None:
                        kept[rows].copy_(x)
        h, c = self._lstm_step(t, x, state)
        heads = torch.addmm(self.heads_bias, h, self.heads_weight.t())
        return PolicyOutput(heads[:, :-1], heads[:, -1], (h, c))

    def _lstm_step(self, t: int, x: Tensor, state: LSTMState) -> LSTMState:
        """ActorCritic.lstm_step (torch.lstm_cell's maths, its gate order i, f, g, o) from start()'s weights; the
        activated gates, the new hidden and cell states are recorded at step t."""
        hidden = self.model.hidden_size
        gates_np = self._gates_np[t]
        if self.batch == 1:
            # The step in numpy: its few ops on 256 to 1024 numbers cost half what torch's dispatch does. One tanh
            # serves all four gates, sigmoid(x) = (1 + tanh(x / 2)) / 2, the halving folded into start()'s weights.
            features = x.shape[1]
            self._lstm_input_np[:, :features] = x.numpy()
            self._lstm_input_np[:, features:] = state[0].numpy()
            np.matmul(self._lstm_input_np, self._lstm_weight_t_np, out=gates_np)
            np.add(gates_np, self._lstm_bias_np, out=gates_np)
            np.tanh(gates_np, out=gates_np)
            np.multiply(gates_np, self._gate_scale, out=gates_np)  # (1 + tanh) / 2 for i, f, o; g as it is
            np.add(gates_np, self._gate_shift, out=gates_np)
            i, f = gates_np[:, :hidden], gates_np[:, hidden : 2 * hidden]  # slices: np.split costs 14 us
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

    def backward(self, grad_logits: np.ndarray, grad_values: np.ndarray, state: LSTMState, resets: Tensor) -> None:
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
            grad_x = self._lstm_backward(grad_hiddens, state, resets[: self.steps])
            self._trunk_backward(grad_x)

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

    def _trunk_backward(self, grad: Tensor) -> None:
        """Backward through the trunk's layers, batched over all recorded rows, from grad at its output [T*B, F]."""
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if isinstance(layer, nn.Flatten):
                grad = grad.reshape(self.inputs[i].shape)
            elif isinstance(layer, _ACTIVATIONS):
                grad = _activation_backward(layer, grad, self.inputs[i + 1])
            elif isinstance(layer, nn.Linear):
                inp = self.inputs[i]
                _set_grad(layer.weight, grad.t() @ inp)
                _set_grad(layer.bias, grad.sum(0))
                grad = grad @ layer.weight if i > 0 else grad
            else:
                grad = _conv_backward(layer, grad, self.inputs[i], input_grad=i > 0)


class _NumpyTrunk:
    """Tape.step's trunk for a batch of one, in numpy: the same maths as the torch layers, about half the time.

    At batch 1 each torch op costs more in dispatch than in arithmetic (oneDNN sets up every convolution afresh),
    and the trunk is about a third of a Pong agent step. Here each convolution is one copy of its input's 3x3 (or
    kh x kw) windows, read through strides, and one matrix product with OpenBLAS, all in preallocated buffers in
    the tape's own (channels_last, i.e. H x W x C) layout; the activations write straight into the tape.
    """

    def __init__(self, tape: Tape, examples: list[Tensor]):
        """examples: one input of each trunk layer, then the trunk's output (from Tape's dummy pass)."""
        self.tape = tape
        model = tape.model
        self.standardize = model.standardize
        self.is_image = model.is_image
        # numpy views of the tape's buffers, one row per step (4-d ones are channels_last: H x W x C in memory)
        self.kept = [
            None if b is None else (b.permute(0, 2, 3, 1) if b.dim() == 4 else b).numpy() for b in tape._buffers
        ]
        assert all(k is None or k.flags.c_contiguous for k in self.kept), "rows written through reshape() views"
        self.plans: list[dict | None] = []
        size = 1
        for layer, x, y in zip(tape.layers, examples[:-1], examples[1:], strict=True):
            size = max(size, y.numel())
            plan = None
            if isinstance(layer, nn.Conv2d):
                (_, channels, height, width), (_, out_channels, out_h, out_w) = x.shape, y.shape
                (pad_h, pad_w), (k_h, k_w), (s_h, s_w) = layer.padding, layer.kernel_size, layer.stride
                padded = np.zeros((height + 2 * pad_h, width + 2 * pad_w, channels), np.float32)
                rows, cols, chans = padded.strides
                plan = {
                    "interior": padded[pad_h : pad_h + height, pad_w : pad_w + width],
                    # every output pixel's k_h x k_w x C window of the padded input, as a view
                    "windows": as_strided(
                        padded, (out_h, out_w, k_h, k_w, channels), (s_h * rows, s_w * cols, rows, cols, chans)
                    ),
                    "columns": np.empty((out_h, out_w, k_h, k_w, channels), np.float32),
                    "weight": np.empty((k_h * k_w * channels, out_channels), np.float32),
                    "out": np.empty((out_h, out_w, out_channels), np.float32),
                }
            elif isinstance(layer, nn.Linear):
                plan = {"out": np.empty((1, layer.out_features), np.float32)}
            self.plans.append(plan)
        self.zeros = np.zeros(size, np.float32)
        self.scratch = np.empty(size, np.float32)

    def start(self) -> None:
        """Take the trunk's current weights (conv weights rearranged to [k_h * k_w * C_in, C_out])."""
        with torch.no_grad():
            for layer, plan in zip(self.tape.layers, self.plans, strict=True):
                if isinstance(layer, nn.Conv2d):
                    weight = layer.weight * getattr(layer, "weight_scale", 1.0)  # PixelConv2d: weight / 255
                    plan["weight"][:] = weight.permute(2, 3, 1, 0).reshape(plan["weight"].shape).numpy()
                    plan["bias"] = layer.bias.detach().numpy()
                elif isinstance(layer, nn.Linear):
                    plan["weight"] = layer.weight.detach().numpy().T  # views of the parameters: sync copies into them
                    plan["bias"] = layer.bias.detach().numpy()

    def forward(self, t: int, obs: Tensor) -> Tensor:
        """The trunk's output [1, F] for obs [1, *obs_shape], recording step t's kept activations on the tape."""
        x = self.kept[0][t]
        obs_np = obs.numpy()[0]
        np.copyto(x, obs_np.transpose(1, 2, 0) if self.is_image else obs_np, casting="unsafe")
        if self.standardize:  # standardize_frames: mean 0, std 1 (torch.std_mean's, with N - 1), std at least 1
            x -= x.mean(dtype=np.float32)
            flat = x.reshape(-1)
            x /= max(np.sqrt(np.dot(flat, flat) / np.float32(flat.size - 1)), np.float32(1.0))
        for i, (layer, plan) in enumerate(zip(self.tape.layers, self.plans, strict=True)):
            kept = self.kept[i + 1]
            if isinstance(layer, nn.Conv2d):
                plan["interior"][...] = x
                columns = plan["columns"]
                np.copyto(columns, plan["windows"])
                out = plan["out"]
                np.matmul(
                    columns.reshape(out.shape[0] * out.shape[1], -1), plan["weight"], out=out.reshape(-1, out.shape[2])
                )
                x = np.add(out, plan["bias"], out=out)
            elif isinstance(layer, nn.Linear):
                out = np.matmul(x.reshape(1, -1), plan["weight"], out=plan["out"])
                x = np.add(out, plan["bias"], out=out)
            elif isinstance(layer, nn.Flatten):
                x = x.transpose(2, 0, 1).reshape(1, -1)  # torch flattens C x H x W
            else:
                x = self._activation(layer, x, kept[t].reshape(x.shape))
            if kept is not None and not isinstance(layer, _ACTIVATIONS):
                kept[t].reshape(x.shape)[...] = x
        return torch.from_numpy(self.kept[-1][t : t + 1])

    def _activation(self, layer: nn.Module, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        zeros = self.zeros[: x.size].reshape(x.shape)  # np.minimum with an array of zeros: 3x faster than with 0
        if isinstance(layer, nn.ELU):  # max(x, 0) + alpha * expm1(min(x, 0))
            negative = self.scratch[: x.size].reshape(x.shape)
            np.expm1(np.minimum(x, zeros, out=negative), out=negative)
            if layer.alpha != 1.0:
                negative *= layer.alpha
            return np.add(np.maximum(x, zeros, out=out), negative, out=out)
        if isinstance(layer, nn.ReLU):
            return np.maximum(x, zeros, out=out)
        return np.tanh(x, out=out)


def _format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _set_grad(param: nn.Parameter, grad: Tensor) -> None:
    """param.grad = grad, laid out like param (autograd's guarantee, which the fused Adam step relies on: it walks
    parameter and gradient by memory offset, so a channels_last weight needs a channels_last gradient)."""
    if grad.stride() != param.stride():
        grad = torch.empty_like(param).copy_(grad)
    param.grad = grad


def _activation_into(layer: nn.Module, x: Tensor, out: Tensor) -> Tensor:
    """layer(x) written into out."""
    if isinstance(layer, nn.ELU):
        return torch.ops.aten.elu.out(x, layer.alpha, 1.0, 1.0, out=out)
    if isinstance(layer, nn.ReLU):
        return torch.clamp_min(x, 0.0, out=out)
    return torch.tanh(x, out=out)


def _activation_backward(layer: nn.Module, grad: Tensor, output: Tensor) -> Tensor:
    """Gradient at an activation's input from its output (all three are functions of their own output)."""
    if isinstance(layer, nn.ELU):
        return torch.ops.aten.elu_backward(grad, layer.alpha, 1.0, 1.0, True, output)
    if isinstance(layer, nn.ReLU):
        return torch.ops.aten.threshold_backward(grad, output, 0.0)
    return torch.ops.aten.tanh_backward(grad, output)


def _conv_backward(conv: nn.Conv2d, grad: Tensor, inp: Tensor, input_grad: bool) -> Tensor:
    """Set the conv's weight and bias gradients; return the gradient at its input (None for the first layer)."""
    weight = conv.weight
    scale = getattr(conv, "weight_scale", 1.0)  # PixelConv2d convolves with weight / 255
    grad = grad.contiguous(memory_format=_format(inp))
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
