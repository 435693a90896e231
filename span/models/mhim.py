"""MHIM-MIL (Tang et al. 2023, v1): a student MIL model trained on bags from which its EMA
teacher's most (and optionally least) attended instances are masked, plus a consistency loss
between the teacher's and the student's bag embeddings.

Wraps any model of the contract whose `patch_scores` are its attention and whose `embedding`
is its bag embedding (ABMIL, TransMIL); masking drops instances before the student's
per-instance encoder, which equals the reference's masking after it.

As in the reference code (DearCaat/MHIM-MIL v1, `main.py` and `modules/mhim.py`), by default:

- the teacher ranks the instances in train mode (`model_tea.train()`: its dropout is active),
  without gradient; `teacher_mode="eval"` restores the previous deterministic ranking;
- an ABMIL student (and so its teacher) is the reference's `--baseline attn` model: instance
  encoder Linear + ReLU + dropout 0.25 and a linear classifier, both with biases, and the
  `DAttention` pooling w^T ReLU(V h) without biases (`--da_act relu`, the default the Camelyon-16
  recipe keeps); `reference_attention=False` restores our ABMIL's tanh attention with biases.
  Explicit `student_hparams` win over these defaults.

Not reproduced: the reference initialises its fresh layers with Xavier-normal weights (ours keep
PyTorch's defaults), and its teacher checkpoint is trained with the same architecture as the
student (see `MHIM` on loading a plain ABMIL checkpoint).
"""

from __future__ import annotations

import copy
import logging
import math

import torch

from span.models import build_model
from span.models.base import MILModel, ModelOutput

log = logging.getLogger(__name__)

#: The registered models MHIM can train as its student (the reference's: those whose bag
#: embedding it can compare).
STUDENTS = ("abmil", "transmil")
#: ABMIL hyperparameters of the reference's ABMIL (`DAttention`, `--da_act relu`).
REFERENCE_ABMIL = {"attention_activation": "relu", "attention_bias": False}
TEACHER_MODES = ("train", "eval")


def cosine_schedule(start: float, end: float, progress: float) -> float:
    """Cosine ramp from `start` (progress 0) to `end` (progress 1), as the reference's
    per-iteration `cosine_scheduler`."""
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def _random_subset(
    candidates: torch.Tensor, share: float, generator: torch.Generator | None
) -> torch.Tensor:
    """ceil(share * len) of `candidates`, uniformly at random (drawn on the CPU)."""
    count = math.ceil(len(candidates) * share)
    pick = torch.randperm(len(candidates), generator=generator)[:count]
    return candidates[pick.to(candidates.device)]


def select_masked(
    scores: torch.Tensor,
    ratio_h: float,
    ratio_hr: float,
    ratio_l: float,
    ratio_random: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean (N,) mask of the instances hidden from the student, from teacher scores (N,).

    As the reference's `get_mask`, each part counted on the whole bag with ceil, then united:
    high: of the top ceil(N * ratio_h / ratio_hr) a random ratio_hr share (when ratio_h /
    ratio_hr > 1, a random ratio_h share of all), so about ratio_h of the bag; low: the bottom
    ceil(N * ratio_l); random: ceil(N * ratio_random) uniformly. One instance always stays.
    Random draws, in this order: high, random, the instance kept.
    """
    n = len(scores)
    order = scores.argsort(descending=True, stable=True)
    masked = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if ratio_h > 0:
        pool = ratio_h / ratio_hr
        top, share = (order[: math.ceil(n * pool)], ratio_hr) if pool <= 1 else (order, ratio_h)
        masked[_random_subset(top, share, generator)] = True
    if ratio_l > 0:
        masked[order[n - math.ceil(n * ratio_l) :]] = True
    if ratio_random > 0:
        masked[_random_subset(order, ratio_random, generator)] = True
    if masked.all():
        masked[int(torch.randint(n, (1,), generator=generator))] = False
    return masked


class MHIM(MILModel):
    """Student + EMA teacher with hard-instance masking; evaluation runs the student alone.

    The teacher (no gradient; in training it ranks in train mode, dropout on, unless
    `teacher_mode="eval"`) starts from `teacher_checkpoint`, a state dict of the plain student
    model; `student_init` says what the student takes from it: "encoder" (its instance encoder,
    the reference recipe's `--init_stu_type=fc`), "all" or "none". `mask_ratio_h` decays to 0
    and (with `momentum_cosine`) the EMA momentum rises to 1 by cosine schedules over the
    progress last seen by `loss` (one step behind).

    `reference_attention` (ABMIL students only) builds the student and the teacher with the
    reference's bias-free ReLU attention. A checkpoint of a plain ABMIL (tanh attention with
    biases, e.g. the pipeline's `abmil` variant) still loads: its attention biases are left out
    with a warning and its attention weights then run through ReLU, so the teacher starts close
    to, not equal to, that ABMIL; for the reference recipe train the teacher's ABMIL with
    `attention_activation: relu, attention_bias: false`, or keep the plain attention here with
    `reference_attention=False`.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        student: str = "abmil",
        student_hparams: dict | None = None,
        teacher_checkpoint: str | None = None,
        student_init: str = "encoder",
        momentum: float = 0.9999,
        momentum_cosine: bool = False,
        cl_alpha: float = 0.1,
        temperature: float = 0.1,
        mask_ratio: float = 0.5,
        mask_ratio_h: float = 0.01,
        mask_ratio_hr: float = 0.5,
        mask_ratio_l: float = 0.0,
        teacher_mode: str = "train",
        reference_attention: bool = True,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__(grad_clip)
        if student not in STUDENTS:
            raise ValueError(f"unknown student {student!r}; choose one of {sorted(STUDENTS)}")
        if student_init not in ("encoder", "all", "none"):
            raise ValueError(f"student_init must be encoder, all or none, got {student_init!r}")
        if not 0 < mask_ratio_hr <= 1:
            raise ValueError(f"mask_ratio_hr must be in (0, 1], got {mask_ratio_hr}")
        if teacher_mode not in TEACHER_MODES:
            raise ValueError(f"teacher_mode must be train or eval, got {teacher_mode!r}")
        self.teacher_mode = teacher_mode
        self.momentum, self.momentum_cosine = momentum, momentum_cosine
        self.cl_alpha, self.temperature = cl_alpha, temperature
        self.mask_ratio, self.mask_ratio_h = mask_ratio, mask_ratio_h
        self.mask_ratio_hr, self.mask_ratio_l = mask_ratio_hr, mask_ratio_l
        self.progress = 0.0
        hparams = dict(student_hparams or {})
        if student == "abmil" and reference_attention:
            hparams = {**REFERENCE_ABMIL, **hparams}
        self.student = build_model(student, in_dim, n_classes, **hparams)
        self.teacher = copy.deepcopy(self.student)
        if teacher_checkpoint is None:
            log.warning("MHIM without teacher_checkpoint: the teacher starts untrained")
        else:
            state = torch.load(teacher_checkpoint, map_location="cpu", weights_only=True)
            state = self._without_missing_biases(state)
            self.teacher.load_state_dict(state)
            self._init_student(state, student_init)
        self.teacher.requires_grad_(False)
        self.train(self.training)

    def _without_missing_biases(self, state: dict) -> dict:
        """The checkpoint less the biases the teacher lacks (a plain ABMIL's attention biases
        for the reference's bias-free attention), with a warning; anything else that does not
        match is left to `load_state_dict`'s error."""
        own = self.teacher.state_dict()
        dropped = sorted(k for k in state if k not in own and k.endswith(".bias"))
        if dropped:
            log.warning(
                "MHIM: the teacher checkpoint has biases the student's attention lacks (%s): "
                "it comes from an ABMIL with the plain attention (tanh, biases); the biases are "
                "left out and its attention weights run through the reference's ReLU. Train the "
                "teacher with attention_activation=relu, attention_bias=false for the reference "
                "recipe, or set reference_attention=false.",
                ", ".join(dropped),
            )
        return {k: v for k, v in state.items() if k not in dropped}

    def _init_student(self, state: dict, part: str) -> None:
        if part == "all":
            self.student.load_state_dict(state)
        elif part == "encoder":
            prefix = "encoder."
            encoder = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            self.student.encoder.load_state_dict(encoder)

    def train(self, mode: bool = True) -> MHIM:
        """Switch the student's mode; the teacher follows in training with `teacher_mode`
        "train" (the reference's `model_tea.train()`) and is in eval mode otherwise."""
        super().train(mode)
        self.teacher.train(mode and self.teacher_mode == "train")
        return self

    def current_mask_ratio_h(self) -> float:
        """High-attention mask ratio at the current progress (cosine decay to 0)."""
        return cosine_schedule(self.mask_ratio_h, 0.0, self.progress)

    def current_momentum(self) -> float:
        """EMA momentum at the current progress (constant, or cosine to 1)."""
        if not self.momentum_cosine:
            return self.momentum
        return cosine_schedule(self.momentum, 1.0, self.progress)

    def forward(self, features: torch.Tensor, grid: torch.Tensor) -> ModelOutput:
        if not self.training:
            return self.student(features, grid)
        with torch.no_grad():  # in train mode by default: ranked with dropout on
            teacher = self.teacher(features, grid)
        masked = select_masked(
            teacher.patch_scores,
            self.current_mask_ratio_h(),
            self.mask_ratio_hr,
            self.mask_ratio_l,
            self.mask_ratio,
        )
        keep = (~masked).nonzero().squeeze(1)
        out = self.student(features[keep], grid[keep])
        scores = out.patch_scores.new_zeros(len(features)).index_copy(0, keep, out.patch_scores)
        extras = {"teacher_embedding": teacher.embedding, "masked": masked}
        return ModelOutput(out.logits, scores, out.embedding, extras)

    def loss(self, output: ModelOutput, label: torch.Tensor, progress: float) -> torch.Tensor:
        """CE + cl_alpha * soft-target CE from the teacher's embedding (softmax at
        `temperature`) to the student's (log-softmax); CE alone for evaluation outputs."""
        self.progress = progress
        loss = self.classification_loss(output.logits, label)
        teacher = output.extras.get("teacher_embedding")
        if teacher is None:
            return loss
        target = (teacher / self.temperature).softmax(-1)
        consistency = -(target * output.embedding.log_softmax(-1)).sum()
        return loss + self.cl_alpha * consistency

    @torch.no_grad()
    def after_step(self) -> None:
        """teacher = m * teacher + (1 - m) * student, parameter by parameter."""
        m = self.current_momentum()
        for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            t.mul_(m).add_(s, alpha=1.0 - m)

    def gradient_groups(self) -> list[list[torch.nn.Parameter]]:
        return self.student.gradient_groups()
