"""Fan-in masks chosen and re-fitted on data when they are imposed.

A ``--fanin`` budget can leave a neuron a small share of its weights (a conv after a concat,
or a dense layer after a global average pool, whose every weight reads a whole feature map:
fan-in 64 over a 7x7 pool keeps one weight per output). Chosen by weight magnitude alone and
left as they were, the kept weights carry a fraction of the pre-activation's signal (the zoo's
Concat CNN: the logits' spread fell from 3.1 to 0.2, validation accuracy from 0.87 to 0.20), so
tuning starts from a network that has lost its function, and most of its epochs go to finding
it again. Here each mask is chosen and its weights set as pruning with reconstruction does
(least squares per output neuron, as in He et al., ICCV 2017 "Channel Pruning for Accelerating
Very Deep Neural Networks", and Frantar & Alistarh's SparseGPT): each neuron keeps the
inputs that best predict its unpruned pre-activation on calibration inputs, chosen one at a
time (orthogonal matching pursuit; ``--fanin-mode channels`` keeps its whole-channel choice,
ranked by weight magnitude times the input's root mean square), and the kept weights and the
bias are refitted by least squares to that pre-activation, node after node in graph order,
each on the inputs the nodes refitted before it give it (so later nodes take back part of
the earlier nodes' error).
"""

from __future__ import annotations

import numpy as np
import torch

from ..ir import Conv2dNode, DenseNode
from ..ir.structure import op_fanin
from ..passes.calibrate_weights import input_columns, output_rows
from ..passes.constrain import FANIN_MODES
from .model import TandemNet
from .options import TrainOptions

# Most calibration samples the refit reads (Li et al.'s bias calibration uses about 1,000;
# the zoo's calib.npz holds 512), and most rows (sample x output position) one node's least
# squares reads: more are subsampled. The inputs of one node over these samples are held
# at once (unfolded for a convolution): bounded for networks of the zoo's size, not for
# ImageNet-size feature maps.
MAX_SAMPLES = 512
MAX_ROWS = 65536
# Ridge term, relative to the mean diagonal of the inputs' Gram matrix: keeps a solve stable
# where kept inputs are (nearly) collinear or never active on the calibration data.
RIDGE = 1e-3


def refittable(net: TandemNet, name: str) -> bool:
    """Whether node ``name``'s mask can be chosen and refitted here: dense layers and
    ungrouped convolutions (a grouped conv's neurons read one group; depthwise 3x3 ones have
    fan-in 9 and are never pruned by a budget of 9 or more)."""
    n = net.base[name]
    return isinstance(n, DenseNode) or (isinstance(n, Conv2dNode) and n.groups == 1)


@torch.no_grad()
def impose_refitted(net: TandemNet, names: list[str], x: torch.Tensor, seed: int = 0,
                    batch_size: int = 128) -> dict[str, float]:
    """Impose the fan-in masks of ``names`` (weighted nodes with a budget, masks not fixed
    yet) on ``net`` at its current stage, each chosen and refitted on inputs ``x`` (see the
    module docstring); nodes :func:`refittable` refuses are pruned by
    magnitude as :meth:`TandemNet.shrink` does. At most :data:`MAX_SAMPLES` of ``x`` are
    read. Returns, per refitted node, the share of
    the unpruned pre-activation's variance the pruned one explains (1 - relative MSE)."""
    order = [n for n in net.weighted if n in names]
    fit = [n for n in order if refittable(net, n)]
    x = x[:MAX_SAMPLES]
    net.shrink([n for n in order if n not in fit], 0.0)
    if not fit:
        return {}
    target = {name: [] for name in fit}
    for i in range(0, len(x), batch_size):  # the unpruned pre-activations
        vals = _values(net, x[i:i + batch_size])
        for name in fit:
            target[name].append(vals[name])
    gen = np.random.default_rng(seed)
    explained: dict[str, float] = {}
    joint = {n: g for g in net.shared if net.fanin_mode == "magnitude" and all(m in fit for m in g) for n in g}
    for name in fit:
        group = joint.get(name, (name,))
        if name != max(group, key=fit.index):  # a group is fitted at its last member, on the
            continue                          # inputs every member before it leaves it
        srcs = [net.base[n].inputs[0] for n in group]
        inputs = [[v[s] for s in srcs] for v in (_values(net, x[i:i + batch_size]) for i in range(0, len(x), batch_size))]
        cols = [torch.cat([input_columns(net.base[n], v[j]) for v in inputs]).double().cpu()
                for j, n in enumerate(group)]
        z = sum(torch.cat([output_rows(t) for t in target[n]]).double().cpu() for n in group)
        if len(z) > MAX_ROWS:
            keep = torch.as_tensor(np.sort(gen.choice(len(z), MAX_ROWS, replace=False)))
            cols, z = [c[keep] for c in cols], z[keep]
        share = _impose(net, list(group), cols, z)
        explained.update({n: share for n in group})
    return explained


def impose_due_masks(net: TandemNet, stage: int, opts: TrainOptions, x: torch.Tensor) -> dict[str, float]:
    """Move ``net`` to ``stage``, imposing the fan-in masks that fall due: chosen and
    refitted on ``x`` (the module docstring) unless ``opts.refit`` is off or they are ramped in
    gradually (then by magnitude, at once or by :meth:`TandemNet.shrink` epoch by epoch).
    Returns the share of variance each refitted node explains."""
    if opts.gradual or not opts.refit:
        net.set_stage(stage, prune=not opts.gradual)
        return {}
    net.set_stage(stage, prune=False)
    pending = net.due_masks()
    due = [n for n in pending if net.budgets[n] < op_fanin(net.base[n], nonzero=False)]
    due += [m for g in net.shared if set(g) & set(due) for m in g if m in pending and m not in due]
    net.shrink([n for n in net.due_masks() if n not in due], 0.0)  # budgets they already meet
    return impose_refitted(net, due, x, seed=opts.seed) if due else {}


def _values(net: TandemNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return net._values(x)[1]


def _impose(net: TandemNet, names: list[str], cols: list[torch.Tensor], z: torch.Tensor) -> float:
    """Choose the masks of ``names`` (one node, or the branches of an add that share a
    budget: ``net.shared``) on their inputs ``cols`` and the target ``z`` (the sum of their
    unpruned pre-activations), by pursuit over all their inputs at once (or the structured
    mode's choice), fix them, and set the kept weights and the bias to the least-squares fit
    of ``z``. The fitted bias goes to the first node with one; the others keep theirs."""
    keys = [net.key[n] for n in names]
    flats = [net.weight[k].detach().reshape(net.weight[k].shape[0], -1).double().cpu() for k in keys]
    widths = [f.shape[1] for f in flats]
    x = torch.cat(cols, 1)
    biased = [k for k in keys if k in net.bias]
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) if biased else x
    gram = x1.T @ x1
    cross = x1.T @ z
    ridge = RIDGE * float(gram.diagonal()[:x.shape[1]].mean()) + 1e-12
    budget = net.shared.get(tuple(names), net.budgets[names[0]])
    if net.fanin_mode == "magnitude":
        mask = _pursuit(gram.numpy(), cross.numpy(), x.shape[1], budget, ridge)
    else:  # structured masks (one node): the mode's own choice, on importance
        w = net.weight[keys[0]]
        score = (flats[0] * x.pow(2).mean(0).sqrt()).reshape(w.shape).numpy().astype(np.float32)
        mask = torch.as_tensor(FANIN_MODES[net.fanin_mode](score, budget)).reshape(flats[0].shape)
    new_w = torch.zeros(len(z[0]), x.shape[1], dtype=torch.float64)
    new_b = torch.zeros(len(z[0]), dtype=torch.float64)
    for o in range(new_w.shape[0]):
        idx = torch.nonzero(mask[o]).reshape(-1)
        if biased:
            idx = torch.cat([idx, torch.tensor([x.shape[1]])])
        g = gram[idx][:, idx] + ridge * torch.eye(len(idx), dtype=gram.dtype)
        sol = torch.linalg.solve(g, cross[idx, o])
        if biased:
            new_w[o, idx[:-1]], new_b[o] = sol[:-1], sol[-1]
        else:
            new_w[o, idx] = sol
    err = ((x1 @ torch.cat([new_w, new_b[:, None]], 1).T if biased else x @ new_w.T) - z).pow(2).mean()
    explained = 1.0 - float(err / z.var(0, unbiased=False).mean().clamp_min(1e-30))
    for k in biased[1:]:
        new_b -= net.bias[k].detach().double().cpu()
    if biased:
        net.bias[biased[0]].copy_(new_b.to(net.bias[biased[0]]))
    for name, k, part, m in zip(names, keys, new_w.split(widths, 1), mask.split(widths, 1)):
        w = net.weight[k]
        w.copy_(part.reshape(w.shape).to(w))
        net.mask(name).copy_(m.reshape(w.shape).to(net.mask(name)))
        net.masked[net.weighted.index(name)] = True
    net._cache = None
    return explained


def _pursuit(gram: np.ndarray, cross: np.ndarray, n_in: int, budget: int, ridge: float) -> torch.Tensor:
    """Per output neuron, the ``budget`` inputs (of ``n_in``) chosen one at a time, each the
    one whose correlation with what the inputs chosen so far leave unexplained is largest
    (orthogonal matching pursuit, on the Gram matrix ``gram`` of the inputs and ``cross``,
    their products with the targets; a column past ``n_in`` is the bias, always in the fit).
    Where a neuron's budget is one or two weights (a dense layer after a global pool), the
    input that predicts it best, not the one its largest weight read, is what it keeps."""
    outs = cross.shape[1]
    mask = np.zeros((outs, n_in), np.float32)
    if budget >= n_in:
        mask[:] = 1.0
        return torch.as_tensor(mask)
    diag = np.diagonal(gram)[:n_in] + ridge
    for o in range(outs):
        chosen = list(range(n_in, gram.shape[0]))  # the bias column, if any
        free = np.ones(n_in, bool)
        for _ in range(budget):
            if chosen:
                g = gram[np.ix_(chosen, chosen)] + ridge * np.eye(len(chosen))
                sol = np.linalg.solve(g, cross[chosen, o])
                corr = cross[:n_in, o] - gram[:n_in, chosen] @ sol
            else:
                corr = cross[:n_in, o]
            score = np.where(free, corr * corr / diag, -1.0)
            j = int(np.argmax(score))
            chosen.append(j)
            free[j] = False
        mask[o, [j for j in chosen if j < n_in]] = 1.0
    return torch.as_tensor(mask)
