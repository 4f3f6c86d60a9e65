"""Checks every MIL model must pass, shared by the generic and the per-method tests."""

import torch

from wsimil.training.data import pack


def assert_bag_alone_equals_bag_in_batch(model, bags, extras=()):
    """In eval mode a bag scores the same alone as inside a packed batch of other bags."""
    with torch.no_grad():
        out = model(pack(bags, [i % 2 for i in range(len(bags))]))
        start = 0
        for i, b in enumerate(bags):
            alone = model(pack([b], [0]))
            torch.testing.assert_close(alone.bag_logits[0], out.bag_logits[i], rtol=1e-5, atol=1e-6)
            part = slice(start, start + len(b))
            torch.testing.assert_close(alone.instance_scores, out.instance_scores[part], rtol=1e-5, atol=1e-6)
            for key in extras:
                torch.testing.assert_close(alone.extras[key], out.extras[key][part], rtol=1e-5, atol=1e-6)
            start += len(b)


def assert_order_invariant(model, bag):
    """Permuting a bag's instances permutes its instance scores and leaves its bag logit unchanged."""
    perm = torch.randperm(len(bag))
    with torch.no_grad():
        a, p = model(pack([bag], [1])), model(pack([bag[perm]], [1]))
    torch.testing.assert_close(a.bag_logits, p.bag_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.instance_scores[perm], p.instance_scores, rtol=1e-5, atol=1e-6)
