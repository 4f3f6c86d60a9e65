"""CausalMIL (Zhang et al., NeurIPS 2022): max-pooling MIL with a variational instance encoder, a
bag-conditioned prior and a decoder that reconstructs each bag's max instance.

Follows ``WeijiaZhang24/CausalMIL`` ``models/networks_colon.py`` (class ``cmil``) and ``colon_cancer.py``
(the MNIST variant ``models/networks_mnists.py`` is the same model with another trunk):

- trunk h = f(x) (N, H); instance posterior q(z|x) = N(mu(h), exp(logvar(h))), z (N, latent), sampled
  (reparameterised) while training, mu at evaluation (``cmil.classifier_ins`` scores instances at mu);
- bag prior p(z|u) = N(m_b, exp(l_b)) with u_b the mean of the bag's trunk features ("deep set prior") and
  m_b, l_b = Linear(H, 1)(u_b): ONE scalar per bag, broadcast over the latent dimensions;
- instance logit Linear(latent, 1)(z); bag logit = the max instance logit (``auxiliary_y_fixed``);
- decoder: reconstructs the max instance of each bag only, from its z (MSE, mean over elements);
- loss (``cmil.loss_function``) = recon + kl_coef * (KL(p(z|u) || N(0, 1)) + KL(q(z_max|x) || p(z|u)))
  + bce_weight * BCE; both KL terms summed over latent dimensions and averaged over the bags; the instance
  KL is taken at each bag's max instance only (a KL over all instances is commented out in the original).

Adaptation to pre-extracted features (the colon trunk is a conv net on 27x27 RGB patches): the trunk is
Linear(D, H)-ReLU-Linear(H, H)-ReLU (its two conv blocks; post-ReLU like the original's pooled conv output)
and the decoder its mirror Linear(latent, H)-ReLU-Linear(H, H)-ReLU-Linear(H, D) with a linear output
(features are real-valued; the colon decoder also ends with a linear 1x1 conv).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wsimil.models.base import MILBatch, MILModel, MILOutput, register_method
from wsimil.models.focusmil import gaussian_kl
from wsimil.models.ops import segment_argmax, segment_mean

KL_ESTIMATORS = ("sample", "analytic")


def gaussian_kl_diag(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """Element-wise KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))); the prior broadcasts
    (a (B, 1) prior against a (B, latent) posterior: CausalMIL's scalar bag prior)."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0)


def gaussian_log_ratio(z: Tensor, mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """Element-wise log q(z) - log p(z) for diagonal Gaussians q, p: the single-sample KL estimate of
    ``networks_colon.py`` (``lpdf_qz_xu - lpdf_pzu``; the log(2 pi) terms cancel). Its mean over
    z ~ q is ``gaussian_kl_diag``."""
    log_q = -0.5 * (logvar_q + (z - mu_q).pow(2) / logvar_q.exp())
    log_p = -0.5 * (logvar_p + (z - mu_p).pow(2) / logvar_p.exp())
    return log_q - log_p


def _lecun_uniform_(module: nn.Module) -> None:
    """``colon_cancer.py`` ``weights_init``: Linear weights U(+-sqrt(3 / fan_in)), biases zero."""
    if isinstance(module, nn.Linear):
        bound = math.sqrt(3.0 / module.in_features)
        nn.init.uniform_(module.weight, -bound, bound)
        nn.init.zeros_(module.bias)


class CausalMIL(MILModel):
    """Variational max-pooling MIL with a bag-conditioned prior and max-instance reconstruction.

    ``extras``: ``mu``/``logvar`` (N, latent); ``max_index`` (B,) long, each bag's max instance in the
    packed batch; ``z_max``/``mu_max``/``logvar_max`` (B, latent); ``prior_mu``/``prior_logvar`` (B, 1);
    ``recon`` (B, D), the decoded max instances.
    """

    name = "causalmil"
    instance_score_name = "instance logit"
    loss_is_bag_mean = True  # BCE, reconstruction and both KL terms are means over the bags of the batch

    def __init__(
        self,
        *,
        in_dim: int,
        hidden: int = 256,
        latent: int = 24,
        kl_coef: float = 1.0,
        bce_weight: float = 1000.0,
        recon_weight: float = 1.0,
        kl_estimator: str = "sample",
    ):
        super().__init__()
        if kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
        # encoder_x (conv trunk -> MLP trunk) and encoder_xnou (the two linear heads)
        self.trunk = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        # deep_set_mean / deep_set_logvar: the bag prior from the mean trunk feature, one scalar each
        self.prior_mu = nn.Linear(hidden, 1)
        self.prior_logvar = nn.Linear(hidden, 1)
        self.head = nn.Linear(latent, 1)  # auxiliary_y_fixed.fc_ins
        self.decoder = nn.Sequential(  # decoder_x, mirrored trunk
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, in_dim)
        )
        self.apply(_lecun_uniform_)
        self.kl_coef, self.bce_weight, self.recon_weight = kl_coef, bce_weight, recon_weight
        self.kl_estimator = kl_estimator

    def forward(self, batch: MILBatch) -> MILOutput:
        h = self.trunk(batch.x)  # (N, H)
        mu, logvar = self.mu(h), self.logvar(h)  # (N, latent) each
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        logits = self.head(z).squeeze(-1)  # (N,)
        top = segment_argmax(logits, batch.bag_index, batch.n_bags)  # (B,) the max instance of each bag
        u = segment_mean(h, batch.bag_index, batch.n_bags)  # (B, H) the bag's own instances only
        z_max = z[top]  # (B, latent)
        extras = {
            "mu": mu, "logvar": logvar, "max_index": top,
            "z_max": z_max, "mu_max": mu[top], "logvar_max": logvar[top],
            "prior_mu": self.prior_mu(u), "prior_logvar": self.prior_logvar(u),  # (B, 1) each
            "recon": self.decoder(z_max),  # (B, D)
        }  # fmt: skip
        # bag logit = max instance logit; indexing by the arg-max sends the gradient to that instance only
        return MILOutput(bag_logits=logits[top], instance_scores=logits, extras=extras)

    def loss(self, out: MILOutput, batch: MILBatch) -> dict[str, Tensor]:
        e = {k: v.float() if v.is_floating_point() else v for k, v in out.extras.items()}  # bf16 autocast
        bce = nn.functional.binary_cross_entropy_with_logits(out.bag_logits, batch.labels)
        recon = nn.functional.mse_loss(e["recon"], batch.x[e["max_index"]].float())  # mean over B x D
        kl_prior = gaussian_kl(e["prior_mu"], e["prior_logvar"]).sum(-1).mean()  # KL(p(z|u) || N(0, 1))
        post = (e["mu_max"], e["logvar_max"], e["prior_mu"], e["prior_logvar"])
        if self.kl_estimator == "sample" and self.training:  # the original: log q(z) - log p(z) at the sample
            kl_max = gaussian_log_ratio(e["z_max"], *post).sum(-1).mean()
        else:  # closed form (and at evaluation, where there is no sample)
            kl_max = gaussian_kl_diag(*post).sum(-1).mean()
        kl = kl_prior + kl_max
        loss = self.recon_weight * recon + self.kl_coef * kl + self.bce_weight * bce
        return {"loss": loss, "bce": bce, "recon": recon, "kl_prior": kl_prior, "kl_max": kl_max}


register_method(
    "causalmil",
    family="max-pooling",
    defaults=dict(
        # colon_cancer.py (current version): AdamW lr 1e-4, wd 1e-4, 100 epochs, 128 bags per step (with 80
        # training bags per fold: one full-batch step per epoch), latent 24, BCE x 1000, KL coef 1, no warm-up.
        # Selection: the original keeps the epoch of lowest *training* ELBO; we select on validation AUC.
        optimizer="adamw", lr=1e-4, weight_decay=1e-4, momentum=0.0, nesterov=False, betas=(0.9, 0.999),
        lr_decay=0.0, epochs=100, bags_per_batch=128, grad_clip=None, scheduler=None, selection="val_auc",
        model=dict(hidden=256, latent=24, kl_coef=1.0, bce_weight=1000.0, recon_weight=1.0, kl_estimator="sample"),
    ),
    description="Max-pooling MIL with a variational instance encoder, a bag-conditioned prior and "
    "reconstruction of each bag's max instance.",
    source="Zhang et al. NeurIPS 2022, WeijiaZhang24/CausalMIL models/networks_colon.py, colon_cancer.py",
)(CausalMIL)
