"""Why two models compute different functions, said from their parameters as a porting
engineer would say it. A is the reference; each finding says what B holds against it, with
B's own names for the tensors and B's format's own letters for the gates:

- sizes: vocabulary (and, where both files carry one, which ids differ), H, L, E; one-hot
  against an embedding (and whether B's embed @ W_x is A's one-hot W_x all the same);
- layers swapped (B's layer i holds A's layer j);
- gate blocks permuted: B's blocks, read as its format means them, hold A's gates in another
  order ("B's layer 1 gates are in i,f,o,g order where torch means i,f,g,o"), including a
  Chainer layer stored gate-major instead of interleaved per unit;
- a bias counted twice or missing (torch's and ONNX's two biases), or all zero; a forget-gate
  bias offset;
- a matrix transposed (a reader's fault, or a square matrix), rows of the vocabulary in
  another order;
- otherwise the tensors that differ, by how much.

Equality is impls/tolerances.PORTING["params"] (float32 storage of the same values)."""
from __future__ import annotations

from itertools import permutations

import numpy as np

from .. import layouts
from ..tolerances import PORTING, rel_error
from .model import Ported

EQ = PORTING["params"].rel


def close(x: np.ndarray, y: np.ndarray) -> bool:
    return np.shape(x) == np.shape(y) and rel_error(x, y)[0] <= EQ


def spelling(row: layouts.Layout) -> dict[str, str]:
    """Canonical gate -> the row's own letter (Keras and ONNX write g as c, Chainer as a)."""
    return dict(zip(row.order, row.native_letters.split(" ")[0].split(",")))


def _order(order: tuple[str, ...], interleave: bool, row: layouts.Layout) -> str:
    """'B's ... are in X order where FORMAT means Y', in the row's letters; the blocking is
    said where the row interleaves (Chainer)."""
    sp = spelling(row)
    x, y = ",".join(sp[g] for g in order), ",".join(sp[g] for g in row.order)
    fmt = row.name
    if not row.interleave:
        return f"{x} order where {fmt} means {y}"
    if interleave:
        return f"{x} order where {fmt} means {y} (interleaved per unit)"
    return f"{x} order, in blocks of H, where {fmt} means {y} interleaved per unit"


def _candidates(row: layouts.Layout, H: int) -> list[tuple[tuple[str, ...], bool, np.ndarray]]:
    """Every way a layer could have been stored (gate order x blocking) other than the row's
    own, with the canonical permutation P it makes of A's arrays when read by the row:
    B = A[..., P]."""
    inv = np.argsort(layouts.gate_permutation(row, H))
    out = []
    for order in permutations(layouts.GATES):
        for inter in (False, True):
            if order == row.order and inter == row.interleave:
                continue
            w = layouts.Layout("written", "", order, "", "W_x", "W_h", "b", interleave=inter)
            out.append((order, inter, layouts.gate_permutation(w, H)[inv]))
    return out


def _bias(l: int, a: Ported, b: Ported, ab: np.ndarray, bb: np.ndarray) -> str | None:
    """What is wrong with B's layer-l bias bb against A's ab (both canonical gate order)."""
    if close(bb, ab):
        return None
    H = ab.shape[0] // 4
    names = b.native(f"lstm.{l}.b")
    nab = np.linalg.norm(ab)
    bi, bh = b.parts.get(f"lstm.{l}.b_ih"), b.parts.get(f"lstm.{l}.b_hh")
    if nab > 0 and close(bb, 2 * ab):
        both = (f": {' and '.join(_halves(b, l))} both hold it (they should sum to it)"
                if bi is not None and close(bi, bh) else "")
        return f"B's layer {l} bias ({names}) is twice A's: the bias is counted twice{both}"
    ai, ah = a.parts.get(f"lstm.{l}.b_ih"), a.parts.get(f"lstm.{l}.b_hh")
    if ai is not None and np.any(ai) and np.any(ah):
        an = _halves(a, l)
        for have, lost in ((ai, 1), (ah, 0)):
            if close(bb, have):
                return (f"B's layer {l} bias ({names}) is A's {an[1 - lost]} alone: A's {an[lost]} is "
                        f"missing from it (A's format adds the two)")
    if bi is not None and close(bi, ab) and np.any(bh):
        first, second = _halves(b, l)
        return (f"B's layer {l} adds a second bias, {second}, to A's whole bias (in {first}): it should "
                "be zero, or the two should sum to A's")
    if nab > 0 and not np.any(bb):
        return f"B's layer {l} has no bias ({names}: all zero) where A's is not: the bias is missing"
    d = bb - ab
    f, rest = d[H:2 * H], np.concatenate([d[:H], d[2 * H:]])
    if np.linalg.norm(rest) <= EQ * max(nab, 1e-12) and np.ptp(f) <= 1e-6 * max(1.0, abs(f.mean())):
        return (f"B's layer {l} forget-gate bias ({names}) is A's {f.mean():+g}: an offset (a forget bias "
                "added at initialisation or by the framework, e.g. Keras's unit_forget_bias, TF's forget_bias=1)")
    return f"B's layer {l} bias ({names}) differs from A's (relative error {rel_error(bb, ab)[0]:.2g})"


def _halves(p: Ported, l: int) -> list[str]:
    """The names of layer l's two biases (ONNX packs both into one B: its two halves)."""
    names = p.names.get(f"lstm.{l}.b") or []
    if len(names) == 2:
        return names
    one = names[0] if names else f"lstm.{l}.b"
    return [f"the input half of {one}", f"the recurrent half of {one}"]


def _layer(l: int, al: int, a: Ported, b: Ported) -> list[str]:
    """B's layer l against A's layer al (the same shapes)."""
    get = lambda p, k, r: p.params[f"lstm.{k}.{r}"]  # noqa: E731
    A = {r: get(a, al, r) for r in ("W_x", "W_h", "b")}
    B = {r: get(b, l, r) for r in ("W_x", "W_h", "b")}
    if all(close(B[r], A[r]) for r in A):
        return []
    row = layouts.LAYOUTS[b.layout]
    H = A["W_h"].shape[0]
    matched: dict[str, tuple] = {}
    for r in ("W_x", "W_h"):
        if close(B[r], A[r]):
            matched[r] = ("same",)
            continue
        for order, inter, P in _candidates(row, H):
            if close(B[r], A[r][..., P]):
                matched[r] = (order, inter, P)
                break
    out = []
    perm = [m for m in matched.values() if m[0] != "same"]
    if len(matched) == 2 and perm and all(m[0] == perm[0][0] and m[1] == perm[0][1] for m in perm):
        order, inter, P = perm[0]
        tensors = [r for r in ("W_x", "W_h") if matched[r][0] != "same"]
        which = "gates" if len(tensors) == 2 else f"{b.native(f'lstm.{l}.{tensors[0]}')} gates"
        names = ", ".join(b.native(f"lstm.{l}.{r}") for r in (tensors if len(tensors) == 1 else ("W_x", "W_h", "b")))
        out.append(f"B's layer {l} {which} are in {_order(order, inter, row)} ({names})")
        # the bias moves with the weights where both were permuted: compare it permuted alike
        bias = _bias(l, a, b, A["b"][..., P] if len(tensors) == 2 else A["b"], B["b"])
        if bias:
            out.append(bias)
        return out
    for r in ("W_x", "W_h"):
        m = matched.get(r)
        if m is None:
            out.append(f"B's layer {l} {b.native(f'lstm.{l}.{r}')} differs from A's (relative error "
                       f"{rel_error(B[r], A[r])[0]:.2g}): no gate order, blocking or transposition explains it")
        elif m[0] != "same":
            out.append(f"B's {b.native(f'lstm.{l}.{r}')} (layer {l}) gates are in {_order(m[0], m[1], row)}")
    bias = _bias(l, a, b, A["b"], B["b"])
    return out + ([bias] if bias else [])


def _table(name: str, what: str, a: Ported, b: Ported, axis: int) -> str | None:
    """embed (rows) or out.W / out.b (the vocabulary axis `axis`): equal, transposed, in
    another vocabulary order, or different."""
    x, y = a.params[name], b.params[name]
    if close(y, x):
        return None
    where = f"B's {what} {b.native(name)}"
    if x.ndim == 2 and x.shape[0] == x.shape[1] and close(y, x.T):
        return f"{where} is transposed"
    xa, ya = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1), np.moveaxis(y, axis, 0).reshape(y.shape[axis], -1)
    if len(xa) <= 4096:  # (V, V) squared distances between the entries: a character vocabulary's size
        d = (ya ** 2).sum(1)[:, None] + (xa ** 2).sum(1)[None, :] - 2 * ya @ xa.T
        pi = d.argmin(1)
    else:
        pi = np.arange(len(xa))
    if len(set(pi.tolist())) == len(pi) and close(ya, xa[pi]) and not np.array_equal(pi, np.arange(len(pi))):
        moved = int((pi != np.arange(len(pi))).sum())
        return (f"{where} holds A's entries in another order ({moved} of {len(pi)} token ids moved): the two "
                "number the vocabulary differently")
    return f"{where} differs from A's (relative error {rel_error(y, x)[0]:.2g})"


def diagnose(a: Ported, b: Ported) -> list[str]:
    """The findings, most structural first; [] where the parameters agree."""
    out = [f"A's {f}" for f in a.faults] + [f"B's {f}" for f in b.faults]
    ma, mb = a.model, b.model
    if ma.vocab_size != mb.vocab_size:
        out.append(f"vocabulary size: A has V = {ma.vocab_size}, B has V = {mb.vocab_size} "
                   f"(B's decoder {b.native('out.W')})")
    elif a.vocab and b.vocab and a.vocab != b.vocab:
        ids = [i for i, (x, y) in enumerate(zip(a.vocab, b.vocab)) if x != y]
        out.append(f"the vocabularies differ at {len(ids)} of {ma.vocab_size} ids (first: id {ids[0]} is "
                   f"{a.vocab[ids[0]]!r} in A, {b.vocab[ids[0]]!r} in B)")
    if ma.hidden_size != mb.hidden_size:
        out.append(f"hidden size: A has H = {ma.hidden_size}, B has H = {mb.hidden_size}")
    if ma.num_layers != mb.num_layers:
        out.append(f"layers: A has {ma.num_layers}, B has {mb.num_layers}")
    if ma.input != mb.input:
        one, emb, oname = (a, b, "A") if ma.input == "onehot" else (b, a, "B")
        ename = "B" if oname == "A" else "A"
        txt = (f"input: {oname} takes one-hot input (layer 0's {one.native('lstm.0.W_x')} is V x 4H), {ename} an "
               f"embedding ({emb.native('embed')}, {emb.model.vocab_size} x {emb.model.embed_size})")
        if (ma.vocab_size, ma.hidden_size) == (mb.vocab_size, mb.hidden_size):
            eff = emb.params["embed"] @ emb.params["lstm.0.W_x"]  # (V, 4H): what one-hot would multiply
            same = close(eff, one.params["lstm.0.W_x"])
            txt += (f"; {ename}'s embed @ W_x equals {oname}'s W_x: the same first layer" if same else
                    f"; {ename}'s embed @ W_x is not {oname}'s W_x (relative error "
                    f"{rel_error(eff, one.params['lstm.0.W_x'])[0]:.2g})")
        out.append(txt)
    elif ma.input == "embedding" and ma.embed_size != mb.embed_size:
        out.append(f"embedding width: A has E = {ma.embed_size}, B has E = {mb.embed_size}")
    if ma.hidden_size != mb.hidden_size:
        return out  # nothing else has comparable shapes
    if ma.input == mb.input == "embedding" and ma.embed_size == mb.embed_size and ma.vocab_size == mb.vocab_size:
        out += [f for f in [_table("embed", "embedding", a, b, 0)] if f]
    if ma.vocab_size == mb.vocab_size:
        out += [f for f in (_table("out.W", "decoder weight", a, b, 1), _table("out.b", "decoder bias", a, b, 0)) if f]
    L = min(ma.num_layers, mb.num_layers)
    same = lambda i, j: all(close(b.params[f"lstm.{i}.{r}"], a.params[f"lstm.{j}.{r}"])  # noqa: E731
                            for r in ("W_x", "W_h", "b"))
    pairs = list(range(L))
    if L >= 2 and not all(same(i, i) for i in range(L)):
        match = [[j for j in range(L) if same(i, j)] for i in range(L)]
        if all(len(m) == 1 for m in match) and sorted(m[0] for m in match) == list(range(L)):
            pairs = [m[0] for m in match]
            moved = [i for i in range(L) if pairs[i] != i]
            if len(moved) == 2:
                out.append(f"B's layers {moved[0]} and {moved[1]} are A's layers {pairs[moved[0]]} and "
                           f"{pairs[moved[1]]}: swapped")
            else:
                out.append(f"B's layers hold A's layers in the order {pairs}: the layers are permuted")
    for i in range(L):
        if np.shape(b.params[f"lstm.{i}.W_x"]) == np.shape(a.params[f"lstm.{pairs[i]}.W_x"]):
            out += _layer(i, pairs[i], a, b)
    return out
