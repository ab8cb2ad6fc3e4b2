"""An independent float64 implementation of docs/SPEC.md §1-5, written apart from impls/numpy_impl.py
and in another style (batch-major, one weight matrix per gate, per-step caches in lists, no
shared buffers), used to check the reference. It reads case files directly (docs/SPEC.md §9)."""
from __future__ import annotations

import json

import numpy as np

GATES = "ifgo"


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _split(p, l, H):
    """Canonical layer l -> per-gate (Wx, Wh, b) dicts."""
    Wx, Wh, b = p[f"lstm.{l}.W_x"], p[f"lstm.{l}.W_h"], p[f"lstm.{l}.b"]
    return ({g: Wx[:, k * H:(k + 1) * H] for k, g in enumerate(GATES)},
            {g: Wh[:, k * H:(k + 1) * H] for k, g in enumerate(GATES)},
            {g: b[k * H:(k + 1) * H] for k, g in enumerate(GATES)})


def _inputs(spec, p, tokens):
    """(B, T, D0) layer-0 inputs."""
    V = spec["vocab_size"]
    if spec["input"] == "embedding":
        return p["embed"][tokens]
    return np.eye(V)[tokens]


def forward(spec, p, tokens, h0, c0):
    B, T = tokens.shape
    H, L = spec["hidden_size"], spec["num_layers"]
    x = _inputs(spec, p, tokens)
    caches, hT, cT = [], [], []
    for l in range(L):
        Wx, Wh, b = _split(p, l, H)
        h, c = h0[l], c0[l]
        outs, cache = [], []
        for t in range(T):
            xt = x[:, t, :]
            a = {g: xt @ Wx[g] + h @ Wh[g] + b[g] for g in GATES}
            i, f, o, g = _sig(a["i"]), _sig(a["f"]), _sig(a["o"]), np.tanh(a["g"])
            c_new = f * c + i * g
            h_new = o * np.tanh(c_new)
            cache.append(dict(x=xt, h=h, c=c, i=i, f=f, o=o, g=g, c_new=c_new))
            h, c = h_new, c_new
            outs.append(h)
        caches.append(cache)
        hT.append(h)
        cT.append(c)
        x = np.stack(outs, axis=1)  # (B, T, H)
    logits = x @ p["out.W"] + p["out.b"]
    return logits, np.array(hT), np.array(cT), caches, x


def loss_of(logits, targets):
    m = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(-1, keepdims=True)) + m
    logp = logits - lse
    B, T = targets.shape
    return -np.mean([logp[b, t, targets[b, t]] for b in range(B) for t in range(T)]), logp


def grads(spec, p, tokens, targets, h0, c0):
    B, T = tokens.shape
    H, L, V = spec["hidden_size"], spec["num_layers"], spec["vocab_size"]
    logits, hT, cT, caches, top = forward(spec, p, tokens, h0, c0)
    loss, logp = loss_of(logits, targets)
    dlog = np.exp(logp)
    for b in range(B):
        for t in range(T):
            dlog[b, t, targets[b, t]] -= 1
    dlog /= B * T
    g = {"out.W": np.einsum("bth,btv->hv", top, dlog), "out.b": dlog.sum((0, 1))}
    dx = dlog @ p["out.W"].T  # (B, T, H) into the top layer's outputs
    for l in reversed(range(L)):
        Wx, Wh, _ = _split(p, l, H)
        gWx = {k: 0.0 for k in GATES}
        gWh = {k: 0.0 for k in GATES}
        gb = {k: 0.0 for k in GATES}
        dh_next, dc_next = np.zeros((B, H)), np.zeros((B, H))
        dx_below = [None] * T
        for t in reversed(range(T)):
            s = caches[l][t]
            dh = dx[:, t, :] + dh_next
            tc = np.tanh(s["c_new"])
            dc = dc_next + dh * s["o"] * (1 - tc ** 2)
            da = {"i": dc * s["g"] * s["i"] * (1 - s["i"]), "f": dc * s["c"] * s["f"] * (1 - s["f"]),
                  "o": dh * tc * s["o"] * (1 - s["o"]), "g": dc * s["i"] * (1 - s["g"] ** 2)}
            for k in GATES:
                gWx[k] = gWx[k] + s["x"].T @ da[k]
                gWh[k] = gWh[k] + s["h"].T @ da[k]
                gb[k] = gb[k] + da[k].sum(0)
            dh_next = sum(da[k] @ Wh[k].T for k in GATES)
            dc_next = dc * s["f"]
            dx_below[t] = sum(da[k] @ Wx[k].T for k in GATES)
        g[f"lstm.{l}.W_x"] = np.concatenate([gWx[k] for k in GATES], axis=1)
        g[f"lstm.{l}.W_h"] = np.concatenate([gWh[k] for k in GATES], axis=1)
        g[f"lstm.{l}.b"] = np.concatenate([gb[k] for k in GATES])
        dx = np.stack(dx_below, axis=1)
    if spec["input"] == "embedding":
        gE = np.zeros_like(p["embed"])
        for b in range(B):
            for t in range(T):
                gE[tokens[b, t]] += dx[b, t]
        g["embed"] = gE
    return loss, logits, hT, cT, g


def step(spec, p, g, st, t):
    """Clip then update, per docs/SPEC.md §4, on dicts (returns new params)."""
    clip, o = spec["clip"], spec["optimizer"]
    if clip["kind"] == "norm":
        n = np.sqrt(sum((v ** 2).sum() for v in g.values()))
        g = {k: v * min(1.0, clip["value"] / n) for k, v in g.items()}
    elif clip["kind"] == "value":
        g = {k: np.minimum(np.maximum(v, -clip["value"]), clip["value"]) for k, v in g.items()}
    lr, new = o["lr"], {}
    for k in p:
        s = st.setdefault(k, {"m": 0.0, "v": 0.0})
        if o["name"] == "sgd":
            new[k] = p[k] - lr * g[k]
        elif o["name"] == "adam":
            b1, b2, eps = o.get("beta1", 0.9), o.get("beta2", 0.999), o.get("eps", 1e-8)
            s["m"] = b1 * s["m"] + (1 - b1) * g[k]
            s["v"] = b2 * s["v"] + (1 - b2) * g[k] ** 2
            new[k] = p[k] - lr * (s["m"] / (1 - b1 ** t)) / (np.sqrt(s["v"] / (1 - b2 ** t)) + eps)
        elif o["name"] == "rmsprop":
            a, eps = o.get("alpha", 0.99), o.get("eps", 1e-8)
            s["v"] = a * s["v"] + (1 - a) * g[k] ** 2
            new[k] = p[k] - lr * g[k] / (np.sqrt(s["v"]) + eps)
        elif o["name"] == "adagrad":
            s["v"] = s["v"] + g[k] ** 2
            new[k] = p[k] - lr * g[k] / (np.sqrt(s["v"]) + o.get("eps", 1e-8))
    return new


def sample(spec, p, prefix, gen, uniforms):
    L, H = spec["num_layers"], spec["hidden_size"]
    h, c = np.zeros((L, 1, H)), np.zeros((L, 1, H))
    logits, h, c, _, _ = forward(spec, p, prefix[None, :], h, c)
    out = []
    for n in range(gen["n"]):
        z = logits[0, -1]
        if gen["temperature"] == 0:
            tok = int(np.argmax(z))
        else:
            z = z / gen["temperature"]
            if 0 < gen.get("top_k", 0) < len(z):
                z = np.where(z >= np.sort(z)[::-1][gen["top_k"] - 1], z, -np.inf)
            pr = np.exp(z - z.max())
            pr /= pr.sum()
            acc, tok = 0.0, None
            for i, q in enumerate(pr):
                acc += q
                if uniforms[n] < acc:
                    tok = i
                    break
            if tok is None:
                tok = int(np.flatnonzero(pr)[-1])
        out.append(tok)
        logits, h, c, _, _ = forward(spec, p, np.array([[tok]]), h, c)
    return np.array(out)


def run_case_file(path):
    """Every docs/SPEC.md §9 output for the case at `path`."""
    z = np.load(path)
    raw = z["spec"].reshape(-1)[0]
    spec = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    p = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
    tok, tgt, h0, c0 = z["tokens"], z["targets"], z["h0"], z["c0"]
    loss, logits, h, c, g = grads(spec, p, tok, tgt, h0, c0)
    out = {"logits": logits, "h": h, "c": c, "loss": np.array(loss)}
    out.update({f"grad/{k}": v for k, v in g.items()})
    out["generated"] = sample(spec, p, z["prefix"], spec["generate"], z["uniforms"])
    st, hs, cs, losses, q = {}, h0, c0, [], dict(p)
    for t in range(1, spec["steps"] + 1):
        l_, _, hs, cs, g = grads(spec, q, tok, tgt, hs, cs)
        losses.append(l_)
        q = step(spec, q, g, st, t)
    out["losses"] = np.array(losses)
    out.update({f"after/{k}": v for k, v in q.items()})
    return out
