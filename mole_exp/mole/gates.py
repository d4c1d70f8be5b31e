"""The MoLE gate (paper Eqs. 9-11), made to work with variable-length T5 inputs.

Paper: E_Omega = Normalization(E_0(x) (+) ... (+) E_{N-1}(x))      (Eq. 9, N x L x d)
       eps     = Flatten(E_Omega)^T e,  e in R^{(N*L*d) x N}          (Eq. 10)
       G(eps)  = softmax(eps / tau)                                   (Eq. 11, tau learnable)

Eq. 10 taken literally fixes the sequence length L. Our nearest faithful choice:
  1. normalise each expert's output per token over the feature dim (LayerNorm without affine),
  2. project per token with a length-independent e in R^{(N*d) x N} (input form `concat`), and
  3. average the per-token logits over the valid tokens of the sequence the linear reads
     (scope `sequence`: one weight vector per example, as in the paper) or keep them per token
     (scope `token`).
Because the projection is linear, (3) equals projecting the pooled normalised outputs.
In a causal stream (ModelFamily.streams) the average runs over the prefix (position t sees tokens <= t), so teacher-forced
training and step-by-step generation with a KV cache give identical weights. Where the causal stream carries a
valid-token mask (a decoder-only LM's `attention_mask`: right padding in training, left padding in batched
generation), the prefix average runs over the valid tokens <= t only (a running sum and a running count per row,
`pool_causal`): the nearest faithful choice to Eq. 10's flattened fixed-length sequence when sequences are padded,
so a padded prompt's tokens get the weights the prompt alone gets. A causal stream without a mask (an
encoder-decoder's target prefix, never padded before a valid token) pools over every position, as before.

Other input forms: `per_expert` (e_i in R^d per expert, logit_i = <norm E_i, e_i>: N*d parameters
instead of N*d*N) and `hidden` (the authors' released code: logits from the LayerNorm-ed input x).

What E_i is and how it is normalised are two switches (the expert-output forms only):
  `expert_output`: `delta` (default) E_i = s_i B_i A_i x, the LoRA's delta; `full` E_i = W x + s_i B_i A_i x,
                   the linear's output with LoRA i applied (Eq. 8 read literally: the base output included);
  `normalization`: `per_expert` (default) one LayerNorm per E_i over its d features; `joint` one LayerNorm
                   over the concatenation E_0 (+) ... (+) E_{N-1} of a token, N*d features (Eq. 9 read literally).
`full` + `joint` is the literal reading of Eqs. 8-9.

Two mathematically equal implementations of the expert-output forms are provided:
`stacked` materialises E (B, T, N, d) (the reference), `rank_space` / `rank_space_saved` never do: with
u_i = A_i x and E_i = s_i B_i u_i, the per-token mean, norm and projection of E_i are all
functions of u_i and small r-space matrices (B_i^T e, 1^T B_i, B_i^T B_i). `rank_space` (the default)
also recomputes u in backward instead of keeping it (mole_exp/mole/rank_space.py); `rank_space_saved` keeps it.
With `expert_output=full` the base output y = W x enters through <y, B_i v> = (B_i^T y) . v, ||y||^2, sum_d y
and <y, e_ik>: one (d -> N*r) contraction B^T y per gate evaluation more; with `joint` the shared inverse
std lets the projection of y fold over experts (y . sum_i e_ik: d*N per token), with `per_expert` it cannot
(y . e_ik for every i, k: d*N*N per token, the stacked projection's cost, and a (B, T, N, N) intermediate).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

INPUT_FORMS = ("concat", "per_expert", "hidden")
SCOPES = ("sequence", "token")
IMPLEMENTATIONS = ("rank_space", "rank_space_saved", "stacked")
EXPERT_OUTPUTS = ("delta", "full")  # E_i = s_i B_i A_i x | W x + s_i B_i A_i x (Eq. 8)
NORMALIZATIONS = ("per_expert", "joint")  # LayerNorm of each E_i over d | of E_0 (+) ... (+) E_{N-1} over N*d (Eq. 9)
DEFAULT_READING = {"expert_output": "delta", "normalization": "per_expert"}
NORM_EPS = 1e-5


def check_reading(input_form: str, expert_output: str, normalization: str) -> None:
    """What the gate reads (`gate.expert_output`) and how it normalises it (`gate.normalization`): known
    values, and only with the forms that read the experts' outputs (concat, per_expert)."""
    if expert_output not in EXPERT_OUTPUTS:
        raise ValueError(f"composer.gate.expert_output={expert_output!r} is not one of {list(EXPERT_OUTPUTS)}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"composer.gate.normalization={normalization!r} is not one of {list(NORMALIZATIONS)}")
    if input_form == "hidden":
        changed = {k: v for k, v in (("expert_output", expert_output), ("normalization", normalization)) if v != DEFAULT_READING[k]}
        if changed:
            settings = ", ".join(f"composer.gate.{k}={v!r}" for k, v in changed.items())
            raise ValueError(
                f"{settings} does not apply to composer.gate.input_form='hidden', which reads the linear's input x, not the "
                f"experts' outputs: use input_form concat or per_expert, or leave {DEFAULT_READING}"
            )


def _gate_precision(tensor: torch.Tensor) -> torch.Tensor:
    """Gate statistics run in at least float32 (bf16 variances cancel badly), float64 when given float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class Temperature(nn.Module):
    """tau of Eq. 11: learnable (log-parameterised, clamped to [min, max]) or fixed."""

    def __init__(self, init: float = 1.0, learnable: bool = True, min: float = 0.05, max: float = 100.0):
        super().__init__()
        if not (0 < min <= init <= max):
            raise ValueError(f"composer.gate.temperature: need 0 < min <= init <= max, got min={min}, init={init}, max={max}")
        log_init = torch.tensor(math.log(init))
        if learnable:
            self.log_tau = nn.Parameter(log_init)
        else:
            self.register_buffer("log_tau", log_init)
        self.min, self.max = float(min), float(max)

    def forward(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(self.min, self.max)


class Gate(nn.Module):
    """One gating function: per-token logits -> pooled -> softmax(./tau) -> expert weights."""

    def __init__(
        self,
        num_experts: int,
        feature_dim: int,
        input_form: str = "concat",
        scope: str = "sequence",
        temperature: dict | None = None,
        init_std: float = 0.0,
        expert_output: str = "delta",
        normalization: str = "per_expert",
    ):
        super().__init__()  # the settings come checked (mole/inject.py: gate_settings)
        self.num_experts, self.input_form, self.scope = num_experts, input_form, scope
        self.expert_output, self.normalization = expert_output, normalization
        shape = {
            "concat": (num_experts, feature_dim, num_experts),  # e of Eq. 10, (N*d) x N stored as (N, d, N)
            "per_expert": (num_experts, feature_dim),  # one e_i in R^d per expert
            "hidden": (feature_dim, num_experts),  # d_in x N on the normalised input
        }[input_form]
        self.projection = nn.Parameter(torch.randn(shape) * init_std if init_std > 0 else torch.zeros(shape))
        self.temperature = Temperature(**(temperature or {}))

    # ------------------------------------------------------------------ per-token logits (Eq. 9-10)

    @property
    def reads_base_output(self) -> bool:
        """Whether the logits need the linear's base output W x (expert_output=full, Eq. 8)."""
        return self.input_form != "hidden" and self.expert_output == "full"

    def token_logits_stacked(self, expert_outputs: torch.Tensor, base_output: torch.Tensor | None = None) -> torch.Tensor:
        """Reference form. expert_outputs: (B, T, N, d) = s_i B_i A_i x; base_output: (B, T, d) = W x, read
        with expert_output=full.  Returns (B, T, N)."""
        features = _gate_precision(expert_outputs)  # (B, T, N, d): E_i
        if self.expert_output == "full":
            features = features + _gate_precision(self._base_output(base_output))[..., None, :]  # Eq. 8: W x + s_i B_i A_i x
        normalized_shape = features.shape[-2:] if self.normalization == "joint" else features.shape[-1:]  # N*d or d
        normalized = F.layer_norm(features, normalized_shape, eps=NORM_EPS)  # Eq. 9
        projection = self.projection.to(normalized.dtype)
        if self.input_form == "concat":
            return torch.einsum("btnd,ndk->btk", normalized, projection)  # Eq. 10
        return torch.einsum("btnd,nd->btn", normalized, projection)

    def token_logits_rank_space(
        self, rank_inputs: torch.Tensor, lora_B: torch.Tensor, scaling: torch.Tensor, base_output: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Same logits from r-space quantities (and, with expert_output=full, the base output y = W x).

        rank_inputs u: (B, T, N, r) = A_i x;  lora_B: (N, d, r);  scaling: (N,);  base_output: (B, T, d).
        Returns (B, T, N).
        """
        scaled = _gate_precision(rank_inputs) * scaling.to(torch.promote_types(rank_inputs.dtype, torch.float32))[:, None]  # (B, T, N, r): E_i = B_i scaled_i
        lora_B = lora_B.to(scaled.dtype)
        feature_dim = lora_B.shape[1]
        column_sums = lora_B.sum(dim=1)  # (N, r): 1^T B_i
        gram = torch.einsum("ndr,nds->nrs", lora_B, lora_B)  # (N, r, r): B_i^T B_i
        sums = torch.einsum("btnr,nr->btn", scaled, column_sums)  # sum_d E_i
        squares = torch.einsum("btnr,nrs,btns->btn", scaled, gram, scaled)  # ||E_i||^2
        base = None
        if self.expert_output == "full":  # E_i = y + B_i v_i: sum_d y + 1^T B_i v_i, ||y||^2 + 2 (B_i^T y) . v_i + ||B_i v_i||^2
            base = self._base_output(base_output).to(scaled.dtype)  # (B, T, d)
            base_B = torch.einsum("btd,ndr->btnr", base, lora_B)  # (B, T, N, r): B_i^T y
            sums = sums + base.sum(dim=-1, keepdim=True)
            squares = squares + base.square().sum(dim=-1, keepdim=True) + 2 * torch.einsum("btnr,btnr->btn", base_B, scaled)
        if self.normalization == "joint":  # one mean and variance over the N*d features of a token (Eq. 9)
            count = feature_dim * scaled.shape[2]
            mean, mean_square = sums.sum(dim=-1, keepdim=True) / count, squares.sum(dim=-1, keepdim=True) / count  # (B, T, 1)
        else:
            mean, mean_square = sums / feature_dim, squares / feature_dim  # (B, T, N): mean_d(E_i), ||E_i||^2 / d
        inv_std = torch.rsqrt((mean_square - mean.square()).clamp_min(0) + NORM_EPS)  # (B, T, N) or (B, T, 1)
        projection = self.projection.to(scaled.dtype)
        if self.input_form == "concat":
            # logit_k = sum_i inv_std_i (<E_i, e_ik> - mean_i sum_d e_ik)                   (Eq. 10)
            #         = sum_{i,r} (inv_std_i u'_ir) (B_i^T e_ik)_r - sum_i (inv_std_i mean_i) sum_d e_ik  [+ sum_i inv_std_i <y, e_ik>]
            # one (B*T, N*r) @ (N*r, K) product: no (B, T, N, K) intermediate (except full + per_expert, below)
            batch, length, num_experts, rank = scaled.shape
            projected_B = torch.einsum("ndr,ndk->nrk", lora_B, projection)  # (N, r, K): B_i^T e_i
            normalized_u = (scaled * inv_std[..., None]).reshape(batch, length, num_experts * rank)  # (B, T, N*r)
            projected = normalized_u @ projected_B.reshape(num_experts * rank, -1)  # (B, T, K)
            if self.normalization == "joint":  # shared mean and std: the sums over i fold into e
                projected = projected - (inv_std * mean) * projection.sum(dim=(0, 1))  # (B, T, 1) * (K,)
                if base is not None:
                    projected = projected + inv_std * (base @ projection.sum(dim=0))  # (B, T, d) @ (d, K): y . sum_i e_ik
                return projected
            projected = projected - (inv_std * mean) @ projection.sum(dim=1)  # (B, T, N) @ (N, K)
            if base is not None:  # per-expert std: y . e_ik for every i, k (d*N*K per token, as stacked)
                base_projected = (base @ projection.transpose(0, 1).reshape(feature_dim, -1)).unflatten(-1, projection.shape[::2])  # (B, T, N, K)
                projected = projected + torch.einsum("btn,btnk->btk", inv_std, base_projected)
            return projected
        projected_B = torch.einsum("ndr,nd->nr", lora_B, projection)  # (N, r)
        dot = torch.einsum("btnr,nr->btn", scaled, projected_B)  # <B_i v_i, e_i>
        if base is not None:
            dot = dot + base @ projection.T  # (B, T, N): <y, e_i>
        return (dot - mean * projection.sum(dim=1)) * inv_std

    def _base_output(self, base_output: torch.Tensor | None) -> torch.Tensor:
        if base_output is None:
            raise ValueError("composer.gate.expert_output='full' reads the linear's base output W x, but none was given")
        return base_output

    def token_logits_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The released code's form: hidden (B, T, d_in) -> (B, T, N)."""
        normalized = F.layer_norm(_gate_precision(hidden), hidden.shape[-1:], eps=NORM_EPS)
        return normalized @ self.projection.to(normalized.dtype)

    # ------------------------------------------------------------------ Eq. 11 and masking

    def probabilities(self, logits: torch.Tensor, expert_mask: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(logits / tau) (Eq. 11); masked experts get 0 and the rest are renormalised
        proportionally (the paper's second inference mode), which equals a softmax over the kept ones."""
        probs = torch.softmax(logits / self.temperature(), dim=-1)
        if expert_mask is not None:
            probs = probs * expert_mask.to(probs.dtype)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        return probs


def pool_bidirectional(token_logits: torch.Tensor, valid_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over valid tokens. token_logits (B, T, N), valid_mask (B, T) -> (B, 1, N)."""
    if valid_mask is None:
        return token_logits.mean(dim=1, keepdim=True)
    weights = valid_mask.to(token_logits.dtype)[..., None]  # (B, T, 1)
    return (token_logits * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


def pool_causal(
    token_logits: torch.Tensor,
    previous_sum: torch.Tensor | None,
    previous_count: int | torch.Tensor,
    valid_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
    """Prefix mean: position t averages the valid tokens <= t, continuing a running sum from cached steps.

    token_logits (B, T, N); previous_sum (B, N) or None; previous_count: the tokens already summed, an int (every
    position valid) or (B,) per row; valid_mask (B, T) of the T new tokens or None (all valid).
    Returns pooled (B, T, N), the new sum (B, N) and the new count (int, or (B,) once a mask was given).

    Without a mask this is the prefix mean over positions 0..t (an unmasked stream: bit for bit as before). With one
    (a causal LM's `attention_mask`: right padding in training, left padding in batched generation) the sum and the
    count run over the valid positions only, per row, so a left-padded prompt gives its tokens the weights the
    prompt alone gives them. A position with no valid token at or before it (a left pad) pools to 0: finite,
    uniform weights, and its output is masked anyway. This is our nearest faithful choice for Eq. 10, which
    flattens a fixed-length sequence (see the module docstring).
    """
    if valid_mask is None and not isinstance(previous_count, torch.Tensor):
        running = token_logits.cumsum(dim=1)  # (B, T, N)
        if previous_sum is not None:
            running = running + previous_sum[:, None]
        positions = torch.arange(1, token_logits.shape[1] + 1, device=token_logits.device, dtype=token_logits.dtype)
        pooled = running / (previous_count + positions)[None, :, None]
        return pooled, running[:, -1], previous_count + token_logits.shape[1]
    if valid_mask is None:
        valid_mask = torch.ones(token_logits.shape[:2], device=token_logits.device)
    weights = valid_mask.to(token_logits.dtype)  # (B, T)
    running = (token_logits * weights[..., None]).cumsum(dim=1)  # (B, T, N): sum of the valid logits <= t
    if previous_sum is not None:
        running = running + previous_sum[:, None]
    counts = weights.cumsum(dim=1) + (previous_count[:, None] if isinstance(previous_count, torch.Tensor) else previous_count)  # (B, T)
    pooled = running / counts.clamp_min(1.0)[..., None]  # a row with no valid token yet: 0 / 1
    return pooled, running[:, -1], counts[:, -1]


def balance_loss(mean_probabilities: torch.Tensor) -> torch.Tensor:
    """L_balance = -sum_i log q_i (Eqs. 14-15); q (N,) is the gate probability of each expert averaged
    over all gating functions and examples. Minimal (= N log N) when q is uniform."""
    return -torch.log(mean_probabilities.clamp_min(1e-12)).sum()


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy over the last dim, in nats."""
    return -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(dim=-1)
