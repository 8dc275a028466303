"""Semi-supervised 3D segmentation steps (CRLN, mean teacher, supervised only), used as ``iteration_update`` of
MONAI's ``SupervisedTrainer``, and the EMA-teacher helpers.

EMA (mean teacher, as UA-MT) at global step ``t`` (Ignite's ``engine.state.iteration``, 1 at the first step)::

    d_t = min(1 - 1 / (t + 1), max_decay)          (max_decay = 0.99)
    theta_T <- d_t * theta_T + (1 - d_t) * theta_S  (parameters);  buffers (BN statistics) copied from the student

Every schedule of the step counts Ignite iterations (``engine.state.iteration``, 1-based), so it does not depend on
how the run is cut into epochs; the bundle config derives the counts from fractions of the run (see its model card).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from volssl.data.strong_aug import StrongView3d
from volssl.losses.crln import ConfidenceWeightedCELoss, CPSLoss, CRLNSupervisedLoss, as_label_map

from .precision import Precision
from .steps import TrainingStep, plain_tensor

__all__ = ["CRLN_MODES", "CRLNStep", "StudentForward", "ema_decay", "ema_update_", "make_teacher", "sigmoid_rampup"]

#: Modes of :class:`CRLNStep`.
CRLN_MODES = ("crln", "mean_teacher", "supervised")


def ema_decay(step: int, max_decay: float = 0.99) -> float:
    """``min(1 - 1 / (step + 1), max_decay)``."""
    return min(1.0 - 1.0 / (float(step) + 1.0), float(max_decay))


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, step: int, max_decay: float = 0.99) -> float:
    """In place: ``theta_T <- d theta_T + (1 - d) theta_S`` for every parameter, ``d = ema_decay(step, max_decay)``;
    buffers (BatchNorm running statistics, counters) are copied from the student.

    Returns:
        the decay ``d`` used.

    Raises:
        ValueError: the two networks do not have the same parameter/buffer structure.
    """
    d = ema_decay(step, max_decay)
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    t_bufs, s_bufs = list(teacher.buffers()), list(student.buffers())
    if len(t_params) != len(s_params) or len(t_bufs) != len(s_bufs):
        raise ValueError("teacher and student differ in structure; build the teacher with make_teacher(student).")
    for pt, ps in zip(t_params, s_params):
        pt.mul_(d).add_(ps.detach(), alpha=1.0 - d)
    for bt, bs in zip(t_bufs, s_bufs):
        bt.copy_(bs)
    return d


def sigmoid_rampup(step: int, length: int) -> float:
    """The mean-teacher ramp-up of Laine and Aila (arXiv 1610.02242), as UA-MT applies it to its consistency weight:
    ``exp(-5 (1 - min(step, length) / length)^2)``, rising from exp(-5) = 0.0067 at step 0 to 1 at ``length``;
    1 throughout when ``length <= 0`` (no ramp-up)."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(float(step), 0.0), float(length)) / float(length)
    return math.exp(-5.0 * phase * phase)


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` in eval mode with ``requires_grad=False`` everywhere (the EMA teacher)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


class StudentForward(nn.Module):
    """The student's training forwards of one step as one module call, so that ``DistributedDataParallel`` can wrap
    it (DDP needs exactly one forward per backward, through the wrapper): the labelled batch (``forward_train`` with
    the DIM in ``"crln"`` mode) and the strong view (logits and embeddings, no DIM), each in its own forward (own
    BatchNorm statistics, as the official code) or, with ``separate_forwards=False``, in one.

    ``forward(x_l, x_s)`` returns ``(out_l, out_s)``, dicts with ``logits`` (and ``rect_map``, ``embedding``... from
    ``forward_train``); ``x_s=None`` (supervised mode) gives ``out_s=None``.
    """

    def __init__(self, student: nn.Module, crln: bool, separate_forwards: bool = True) -> None:
        super().__init__()
        self.student = student
        self.crln = crln
        self.separate_forwards = separate_forwards

    def forward(self, x_l: torch.Tensor, x_s: torch.Tensor | None = None):
        student = self.student
        if x_s is None:
            return (student.forward_train(x_l) if self.crln else {"logits": student(x_l)}), None
        if not self.crln:
            if self.separate_forwards:
                return {"logits": student(x_l)}, {"logits": student(x_s)}
            y_l, y_s = student(torch.cat([x_l, x_s], dim=0)).split([x_l.shape[0], x_s.shape[0]])
            return {"logits": y_l}, {"logits": y_s}
        if self.separate_forwards:
            return student.forward_train(x_l), student.forward_train(x_s, rectifier=False)
        out = student.forward_train(torch.cat([x_l, x_s], dim=0))
        n_l = x_l.shape[0]
        out_l = {k: v[:n_l] for k, v in out.items()}
        out_s = {"logits": out["logits"][n_l:], "embedding": out["embedding"][n_l:]}
        return out_l, out_s


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _cycle(loader: Iterable) -> Iterator:
    """Endless iteration over ``loader``, restarting it (and so reshuffling a DataLoader) when it runs out."""
    while True:
        empty = True
        for item in loader:
            empty = False
            yield item
        if empty:
            raise ValueError("the unlabelled loader is empty.")


class CRLNStep(TrainingStep):
    """One training iteration of CRLN (arXiv 2502.11456), or of its baselines, for MONAI's ``SupervisedTrainer``.

    Data: the trainer's data loader yields the **labelled** batches (dicts with ``image_key`` (B_l, C, H, W, D) and
    ``label_key`` (B_l, 1, H, W, D)); the unlabelled images come from ``unlabeled_loader``, held by the step and
    iterated endlessly (its items: dicts with ``image_key``, or plain tensors). With ``unlabeled_loader=None`` the
    labelled batch itself must carry the unlabelled images under ``unlabeled_key`` (a combined loader). The
    trainer's ``prepare_batch`` is not used. An epoch is the trainer's ``epoch_length`` iterations.

    Modes:

    - ``"crln"`` (``network`` a :class:`~volssl.networks.CRLNNet`): the teacher gives pseudo-labels on the
      unlabelled batch from ``softmax(y_T)``, and from ``softmax(y_T + (1 - a_T) M_T)`` once
      ``engine.state.iteration > rectify_after_iterations`` (``a_T`` is the teacher's own EMA copy of ``a``);
      ``yhat = argmax``, ``c = max``. The strong view moves ``x_u``, ``yhat``, ``c`` together. The student sees the
      labelled batch (``forward_train``: logits, M, embeddings) and the strong view (logits and embeddings, no DIM) in
      two forwards, so each batch gets its own BatchNorm statistics, as in the official code
      (``separate_forwards=False``: one forward of ``[x_l, x_strong]``, the DIM run on both)::

          L = L_sup(y_l, M_l, g) + unsup_weight * L_unsup(y_strong, yhat, c) + cps_weight * L_CPS

      with L_sup = 0.5 [CE + Dice](y_l) + 0.5 [CE + Dice](M_l), L_unsup the confidence-weighted CE (weight per
      sample: fraction of voxels with c >= ``conf_threshold``), L_CPS on the student's embeddings over labelled
      voxels + unlabelled voxels with c >= ``cps_conf_threshold`` (student probabilities for hardness; the mean of
      the teacher's updated prototypes on the unlabelled batch enters the positive key once
      ``engine.state.iteration > prototype_after_iterations``). After the optimiser step, the scalar ``a`` gets its
      own step on the labelled batch: ``0.5 [CE + Dice](y_l + (1 - a) M_l)`` with ``y_l, M_l`` detached (from the
      same forward), SGD (momentum ``rectifier_momentum``) on ``a`` alone (:attr:`rectifier_optimizer`).
    - ``"mean_teacher"`` (a plain segmentation network): pseudo-labels from ``softmax(y_T)``, the same strong view and
      forwards, ``L = 0.5 [CE + Dice](y_l) + w_t * L_unsup``; give ``unsup_rampup_iterations`` for UA-MT's ramp-up.
    - ``"supervised"``: ``L = 0.5 [CE + Dice](y_l)``; the unlabelled data are not read.

    The weight of L_unsup at iteration ``t`` is ``w_t = unsup_weight * sigmoid_rampup(t, unsup_rampup_iterations)``
    (constant ``unsup_weight`` with the default 0, as CRLN's code).

    In every mode the EMA teacher is updated after the step (``ema_update_``, ``t = engine.state.iteration``); it
    is :attr:`teacher` (eval mode, no gradients): put it (or this step, which has ``state_dict`` /
    ``load_state_dict`` for the teacher and the rectifier optimiser) into the ``CheckpointSaver``'s ``save_dict``.
    The trainer's optimiser may hold ``a`` as well: the main loss never gives ``a`` a gradient, so it leaves it alone.

    The forwards (student and teacher) run under the precision policy's autocast
    (:class:`~volssl.engines.TrainingStep`: bf16 on CUDA and on CPUs with native bf16); the losses, the softmax of
    the pseudo-labels and CPS run in float32. ``engine.network`` must be ``network`` (or wrap it). Under ``torch.distributed``
    (``torchrun`` with the bundle's ``multi_gpu_train.json``) the step wraps the student's training forwards in
    ``DistributedDataParallel`` itself (:class:`StudentForward`) and averages ``a``'s gradient over the processes:
    give it, and the trainer, the plain network; each process keeps its own teacher, updated from the same student.

    Args:
        network: the student (the trainer's network).
        unlabeled_loader: iterable of unlabelled batches, or ``None`` (see above; unused in ``"supervised"``).
        mode: one of :data:`CRLN_MODES`.
        image_key: image key of the labelled batch and of the unlabelled loader's items.
        label_key: label key of the labelled batch.
        unlabeled_key: key of the unlabelled images in a combined batch (``unlabeled_loader=None``).
        unsup_weight: weight of L_unsup (0.5).
        cps_weight: ``lambda_cps`` (0.5 for LA).
        rectify_after_iterations: rectified pseudo-labels once ``engine.state.iteration`` (1-based) exceeds it
            (800: the official code's 0-based epoch index > 3 with 200 iterations per epoch).
        prototype_after_iterations: teacher prototypes in the CPS key after this iteration; ``None``:
            ``rectify_after_iterations`` (as the official code).
        unsup_rampup_iterations: length of the sigmoid ramp-up of L_unsup's weight (0: none).
        separate_forwards: the labelled batch and the strong view through separate student forwards (official).
        ema_max_decay: the EMA's ``max_decay`` (0.99).
        strong_view: ``(x, yhat, c, generator=...) -> (x, yhat, c)``; ``None``: :class:`StrongView3d` defaults.
        sup_loss: default :class:`CRLNSupervisedLoss` ``(weight=0.5)``.
        unsup_loss: default :class:`ConfidenceWeightedCELoss` ``(threshold=0.97)``.
        cps_loss: default :class:`CPSLoss` ``()`` (``xi=0.6``).
        cps_conf_threshold: teacher confidence for an unlabelled voxel to be valid in CPS (0.7).
        rectifier_lr: learning rate of ``a``'s step; ``None`` follows the trainer optimiser's current lr (first
            param group), so that its schedule applies.
        rectifier_momentum: SGD momentum of ``a``'s step.
        generator: optional CPU ``torch.Generator`` for the strong view's parameters (and for CPS sampling when on
            the same device); otherwise the global RNGs.
        precision: mixed-precision policy (see :class:`~volssl.engines.TrainingStep`).

    Returns (from ``__call__``): dict of detached 0-dim tensors ``loss``, ``sup``, ``unsup``, ``cps``, ``a`` (0 when the
    network has no ``a``) and ``unsup_weight`` (``w_t``, 0 in ``"supervised"`` mode).

    Raises:
        ValueError: unknown mode; ``"crln"`` with a network lacking ``forward_train``/``a``; a baseline mode with a
            CRLN network; no unlabelled source for a semi-supervised mode.
    """

    def __init__(
        self,
        network: nn.Module,
        unlabeled_loader: Iterable | None = None,
        mode: str = "crln",
        image_key: str = "image",
        label_key: str = "label",
        unlabeled_key: str = "image_u",
        unsup_weight: float = 0.5,
        cps_weight: float = 0.5,
        rectify_after_iterations: int = 800,
        prototype_after_iterations: int | None = None,
        unsup_rampup_iterations: int = 0,
        separate_forwards: bool = True,
        ema_max_decay: float = 0.99,
        strong_view: Callable | None = None,
        sup_loss: nn.Module | None = None,
        unsup_loss: nn.Module | None = None,
        cps_loss: nn.Module | None = None,
        cps_conf_threshold: float = 0.7,
        rectifier_lr: float | None = None,
        rectifier_momentum: float = 0.9,
        generator: torch.Generator | None = None,
        precision: Precision | None = None,
    ) -> None:
        super().__init__(precision, channels_last=False)
        if mode not in CRLN_MODES:
            raise ValueError(f"mode must be one of {CRLN_MODES}, got {mode!r}.")
        is_crln_net = hasattr(network, "forward_train") and isinstance(getattr(network, "a", None), nn.Parameter)
        if mode == "crln" and not is_crln_net:
            raise ValueError(
                f"mode 'crln' needs a CRLN network (forward_train and a parameter 'a'), got {type(network).__name__}."
            )
        if mode != "crln" and hasattr(network, "forward_train"):
            raise ValueError(
                f"mode {mode!r} trains a plain segmentation network; pass the backbone (e.g. VNet), not "
                f"{type(network).__name__}, whose untrained rectifier would spoil its forward()."
            )
        self.student = network
        self.mode = mode
        self.unlabeled_loader = unlabeled_loader
        self.image_key = image_key
        self.label_key = label_key
        self.unlabeled_key = unlabeled_key
        self.unsup_weight = float(unsup_weight)
        self.cps_weight = float(cps_weight)
        self.rectify_after_iterations = int(rectify_after_iterations)
        self.prototype_after_iterations = (
            self.rectify_after_iterations if prototype_after_iterations is None else int(prototype_after_iterations)
        )
        self.unsup_rampup_iterations = int(unsup_rampup_iterations)
        self.separate_forwards = bool(separate_forwards)
        self.ema_max_decay = float(ema_max_decay)
        self.strong_view = StrongView3d() if strong_view is None else strong_view
        self.sup_loss = CRLNSupervisedLoss(weight=0.5) if sup_loss is None else sup_loss
        self.unsup_loss = ConfidenceWeightedCELoss(threshold=0.97) if unsup_loss is None else unsup_loss
        self.cps_loss = CPSLoss() if cps_loss is None else cps_loss
        self.cps_conf_threshold = float(cps_conf_threshold)
        self.rectifier_lr = rectifier_lr
        self.generator = generator
        self.teacher = make_teacher(network)
        self.rectifier_optimizer: torch.optim.Optimizer | None = None
        if mode == "crln":
            lr = 0.0 if rectifier_lr is None else float(rectifier_lr)
            self.rectifier_optimizer = torch.optim.SGD([network.a], lr=lr, momentum=rectifier_momentum)
        self._unlabeled_iter: Iterator | None = None
        self._forward: nn.Module | None = None

    # -- checkpointing ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"teacher": ..., "rectifier_optimizer": ...}`` (the latter only in ``"crln"`` mode)."""
        state = {"teacher": self.teacher.state_dict(), **super().state_dict()}
        if self.rectifier_optimizer is not None:
            state["rectifier_optimizer"] = self.rectifier_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        super().load_state_dict(state)
        if self.rectifier_optimizer is not None and "rectifier_optimizer" in state:
            self.rectifier_optimizer.load_state_dict(state["rectifier_optimizer"])

    def network(self, which: str) -> nn.Module:
        """``"teacher"`` (the EMA teacher) or ``"student"`` (the trained network): what a config validates and ships.

        Raises:
            ValueError: any other name.
        """
        if which == "teacher":
            return self.teacher
        if which == "student":
            return self.student
        raise ValueError(f"the network to ship must be 'teacher' or 'student', got {which!r}.")

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _unlabeled(self, batchdata: dict) -> torch.Tensor:
        if self.unlabeled_loader is None:
            if self.unlabeled_key not in batchdata:
                raise ValueError(
                    f"mode {self.mode!r} needs unlabelled images: give CRLNStep an unlabeled_loader, or put them into "
                    f"the batch under {self.unlabeled_key!r}."
                )
            return plain_tensor(batchdata[self.unlabeled_key])
        if self._unlabeled_iter is None:
            self._unlabeled_iter = _cycle(self.unlabeled_loader)
        item = next(self._unlabeled_iter)
        if isinstance(item, dict):
            return plain_tensor(item[self.image_key])
        return plain_tensor(item)

    def _generator_on(self, device: torch.device) -> torch.Generator | None:
        g = self.generator
        return g if g is not None and g.device.type == device.type else None

    def _check_engine(self, engine) -> None:
        net = engine.network
        if net is not self.student and all(getattr(net, n, None) is not self.student for n in ("module", "_orig_mod")):
            raise ValueError("engine.network is not the network given to CRLNStep (nor a wrapper of it).")

    def _rectifier_step(self, engine, logits: torch.Tensor, rect_map: torch.Tensor, target: torch.Tensor) -> None:
        """Fit ``a`` alone on ``0.5 [CE + Dice](y + (1 - a) M)``, ``y`` and ``M`` detached."""
        opt = self.rectifier_optimizer
        a = self.student.a
        if self.rectifier_lr is None:
            for group in opt.param_groups:
                group["lr"] = engine.optimizer.param_groups[0]["lr"]
        with torch.enable_grad():
            loss_a = self.sup_loss(self.student.rectify(logits, rect_map), target)
            (grad,) = torch.autograd.grad(loss_a, [a])
        if _distributed():  # one a for all processes, as DDP keeps one network
            torch.distributed.all_reduce(grad)
            grad /= torch.distributed.get_world_size()
        a.grad = grad
        opt.step()
        a.grad = None  # keep the trainer's optimiser (which may hold ``a``) from seeing this gradient

    # -- the iteration -----------------------------------------------------------------------------------------------
    def _train_forward(self, device: torch.device) -> nn.Module:
        """:class:`StudentForward`, wrapped in ``DistributedDataParallel`` under ``torch.distributed`` (gradients
        averaged over the processes; ``find_unused_parameters``: ``a`` and, in the strong view's forward, the DIM
        get no gradient from the main loss)."""
        if self._forward is None:
            forward = StudentForward(self.student, self.mode == "crln", self.separate_forwards)
            if _distributed():
                from torch.nn.parallel import DistributedDataParallel

                ids = [device] if device.type == "cuda" else None
                forward = DistributedDataParallel(forward, device_ids=ids, find_unused_parameters=True)
                logging.getLogger("volssl.crln").info(
                    f"student forwards in DistributedDataParallel over {torch.distributed.get_world_size()} processes"
                )
            self._forward = forward
        return self._forward

    def __call__(self, engine, batchdata: dict) -> dict[str, torch.Tensor]:
        self._check_engine(engine)
        device = engine.state.device
        nb = engine.non_blocking
        iteration = int(engine.state.iteration)
        x_l = self.to_device(engine, batchdata[self.image_key])
        g = as_label_map(self.to_device(engine, batchdata[self.label_key]))
        student, teacher = self.student, self.teacher
        crln = self.mode == "crln"
        rectify = iteration > self.rectify_after_iterations
        use_prototypes = iteration > self.prototype_after_iterations

        self.start(engine)
        teacher.eval()
        zero = torch.zeros((), device=device)
        unsup, cps, unsup_weight = zero, zero, 0.0
        rect_map_l: torch.Tensor | None = None
        forward = self._train_forward(device)
        if self.mode == "supervised":
            with self.autocast(engine):
                y_l = forward(x_l)[0]["logits"]
            y_l = y_l.float()
            sup = self.sup_loss(y_l, g)
            loss = sup
        else:
            x_u = self._unlabeled(batchdata).to(device=device, non_blocking=nb)
            with torch.no_grad(), self.autocast(engine):
                if crln:
                    # the DIM runs on the teacher only once its map or its prototypes are used
                    out_t = teacher.forward_train(x_u, rectifier=rectify or use_prototypes)
                    logits_t = out_t["rectified"] if rectify else out_t["logits"]
                else:
                    out_t = {}
                    logits_t = teacher(x_u)
                conf, pseudo = torch.softmax(logits_t.float(), dim=1).max(dim=1)  # (B_u, *S) each
            x_s, y_s, c_s = self.strong_view(x_u, pseudo, conf, generator=self.generator)
            with self.autocast(engine):
                out_l, out_s = forward(x_l, x_s.to(x_l.dtype))
            y_l, y_u = out_l["logits"].float(), out_s["logits"].float()
            if crln:
                rect_map_l = out_l["rect_map"].float()
            sup = self.sup_loss(y_l, g, rect_map_l)
            unsup = self.unsup_loss(y_u, y_s, c_s)
            unsup_weight = self.unsup_weight * sigmoid_rampup(iteration, self.unsup_rampup_iterations)
            loss = sup + unsup_weight * unsup
            if crln:
                labels = torch.cat([g, y_s.long()], dim=0)
                valid = torch.cat([torch.ones_like(g, dtype=torch.bool), c_s >= self.cps_conf_threshold], dim=0)
                probs = torch.softmax(torch.cat([y_l, y_u], dim=0).detach(), dim=1)
                embedding = torch.cat([out_l["embedding"], out_s["embedding"]], dim=0).float()
                protos = None
                if use_prototypes:
                    protos = out_t["prototypes"].float().mean(dim=(0, 2))  # (n, E): mean over batch and K
                cps = self.cps_loss(embedding, labels, valid, probs, protos, generator=self._generator_on(device))
                loss = loss + self.cps_weight * cps

        self.update(engine, loss)

        if crln and rect_map_l is not None:
            self._rectifier_step(engine, y_l.detach(), rect_map_l.detach(), g)
        ema_update_(teacher, student, iteration, self.ema_max_decay)

        a = getattr(student, "a", None)
        return self.finish(
            engine,
            {
                # the labelled batch's logits and label, for the trainer's postprocessing and key metric (train Dice)
                "pred": y_l.detach(),
                "label": g.unsqueeze(1),
                "loss": loss.detach(),
                "sup": sup.detach(),
                "unsup": unsup.detach(),
                "cps": cps.detach(),
                "a": a.detach().clone() if isinstance(a, torch.Tensor) else zero,
                "unsup_weight": torch.tensor(unsup_weight, device=device),
            },
        )
